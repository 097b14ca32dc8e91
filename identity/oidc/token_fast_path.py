"""The token endpoint's fast path: the usual token requests answered on the event loop,
with no worker thread and no transaction, and everything else in a worker thread, in one
transaction.

How a request runs is said here, explicitly, as the server's ``execution``
(:mod:`identity.oidc.execution`, :meth:`AuthorizationServer.running`):

1. :class:`NoDatabase`: a client credentials grant from a client in the cache that
   authenticates with its secret needs no database (its access token is a JWT, stored
   nowhere). It saves the hop to a worker thread and the transaction, most of the
   grant's cost; the work is a few dozen microseconds (an ES256 signature).
2. :class:`Planned` (PostgreSQL): a code exchange or a refresh. The row the grant looks
   up (grants.LOOKUPS) is fetched first, awaited on one of the loop's own connections
   (carebridge.db.loop_pool, autocommit); Authlib then runs with it, and the grant's
   one write, the claim that redeems the code or token and stores its successor, runs
   after, atomic as one statement. Its answer is sent only if the claim succeeded.
3. :class:`InTransaction`: anything else, or whenever the first two cannot answer (the
   grant asked for anything else of the database: a client not in the cache, a subject
   to record, a reuse to revoke and audit; the claim was lost to a racing use, which the
   thread answers as a reuse; the database failed before the claim or refused it). It
   runs again from the start: nothing was written by then.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from sqlalchemy import Dialect

from carebridge.db import (
    DATABASE_ERRORS,
    DatabaseUnavailableError,
    DirectStatement,
    LoopConnections,
    OutcomeUnknownError,
)
from identity.oidc.execution import NoDatabase, NoTransactionError, Planned
from identity.oidc.grants import LOOKUPS, Lookup
from identity.oidc.server import AuthorizationServer
from identity.oidc.starlette_oauth2 import Answer, StarletteOAuth2Request

logger = logging.getLogger(__name__)


async def token_response(server: AuthorizationServer, oauth: StarletteOAuth2Request) -> Answer:
    """The token endpoint's answer: on the event loop if it can be, else in a worker
    thread, in a transaction."""
    quick = await answer_on_loop(server, oauth)
    if quick is not None:
        return quick
    answer: Answer = await server.run(lambda bound: bound.create_token_response(oauth))
    return answer


def answer_without_database(
    server: AuthorizationServer, oauth: StarletteOAuth2Request
) -> Answer | None:
    """A client credentials grant answered with no database (1. above), or None when it
    needs one (a cache miss, a private_key_jwt assertion, whose ``jti`` is recorded,
    another grant)."""
    form = oauth.form
    if form.get("grant_type") != "client_credentials" or "client_assertion" in form:
        return None
    try:
        answer: Answer = server.running(NoDatabase()).create_token_response(oauth)
    except NoTransactionError:
        return None  # nothing was written: it runs again from the start, in a thread
    return answer


async def answer_on_loop(
    server: AuthorizationServer, oauth: StarletteOAuth2Request
) -> Answer | None:
    """A token response computed on the event loop (1. or 2. above), or None, to run it
    in a worker thread, in a transaction, from the start.

    A database that did not answer within the budget before the claim raises
    DatabaseUnavailableError (503: a thread would wait as long again); a claim whose
    outcome is unknown (the connection lost as it ran) raises OutcomeUnknownError
    instead (see :func:`_claim`).
    """
    quick = answer_without_database(server, oauth)
    if quick is not None:
        return quick
    form = oauth.form
    found = LOOKUPS.get(form.get("grant_type", ""))
    connections = server.runtime.loop_connections
    if found is None or connections is None or "client_assertion" in form:
        return None
    parameter, lookup_for = found
    lookup = lookup_for(form.get(parameter, ""))
    if lookup is None or not connections.usable():
        return None
    return await _answer_planned(server, oauth, connections, lookup)


async def _answer_planned(
    server: AuthorizationServer,
    oauth: StarletteOAuth2Request,
    connections: LoopConnections,
    lookup: Lookup,
) -> Answer | None:
    statement, params = lookup
    dialect = connections.dialect
    try:
        async with connections.connection() as connection:
            row = await statement.first_on(connection, dialect, params)
            plan = Planned(dialect, {Planned.key(statement, params): row})
            try:
                answer: Answer = server.running(plan).create_token_response(oauth)
            except NoTransactionError:
                return None
            if plan.write is None:
                return answer
            write, values = plan.write
            claimed = await _claim(write, connection, dialect, values)
            # Not claimed: lost to a racing use; the thread answers it as a reuse.
            return answer if claimed else None
    except TimeoutError as exc:
        # The database did not answer within the web budget (a free connection,
        # connecting, the lookup): a worker thread would wait as long again. Nothing
        # was written; the client may try again (503).
        raise DatabaseUnavailableError("the database did not answer in time") from exc
    except DATABASE_ERRORS as exc:
        # No connection, or the lookup failed, or the server refused the claim (it
        # rolled back): nothing was written.
        logger.warning(
            "token request on the event loop failed (%s): it runs in a worker thread",
            type(exc).__name__,
        )
        return None


async def _claim(
    write: DirectStatement,
    connection: asyncpg.Connection,
    dialect: Dialect,
    values: dict[str, Any],
) -> bool:
    """Run a planned grant's claim. A failure the server reports means the statement
    rolled back (the caller may answer the request again, from the start); any other
    (the connection lost, a timeout) leaves unknown whether it committed, so it is
    raised as OutcomeUnknownError: answered 500 as a COMMIT cut off is
    (carebridge.db.outcome_unknown), never retried, for a retry would find the code or
    token used and revoke its family as stolen."""
    try:
        return bool(await write.rows_on(connection, dialect, values))
    except asyncpg.PostgresError:
        raise
    except DATABASE_ERRORS as exc:
        raise OutcomeUnknownError(
            f"a token claim's outcome is unknown ({type(exc).__name__})"
        ) from exc
