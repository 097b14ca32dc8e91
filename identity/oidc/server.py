"""Authlib's authorization server on Starlette: the glue, written once.

Authlib ships Flask and Django integrations only. Here: an ``OAuth2Request`` built from
a body we parsed ourselves (never ``request.form()``, ten times slower), Authlib's answers
turned into Starlette responses, and the synchronous server run in a worker thread with
one database transaction per request (:class:`identity.oidc.context.Unit`, reachable
from Authlib's callbacks: its connection for the hot statements, an ORM Session on it
made only when asked for), except a token request that needs no database, answered
on the event loop (:meth:`AuthorizationServer.answer_without_database`). The grants it runs
are in :mod:`identity.oidc.grants`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import asyncpg
from authlib.oauth2 import AuthorizationServer as _AuthorizationServer
from authlib.oauth2.rfc6749 import InvalidScopeError, OAuth2Request
from authlib.oauth2.rfc6749.requests import JsonRequest, OAuth2Payload
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc9207 import IssuerParameter
from cachetools import TTLCache
from sqlalchemy import Dialect
from sqlalchemy.orm import Session
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from carebridge.db import (
    DATABASE_ERRORS,
    DatabaseUnavailableError,
    DirectStatement,
    LoopConnections,
    OutcomeUnknownError,
)
from carebridge.http import boundary
from carebridge.http.body import read_bounded
from carebridge.http.forms import MAX_BODY
from carebridge.http.problems import REFUSED_INPUT
from carebridge.runtime import Runtime
from identity.oidc import clients, tokens
from identity.oidc import scopes as scope_rules
from identity.oidc.clients import Client
from identity.oidc.context import (
    MAX_NONCE,
    MAX_PARAMETER,
    MAX_STATE,
    NoTransactionError,
    Plan,
    Unit,
    bound,
    db,
    planned,
    unbound,
)
from identity.oidc.grants import (
    LOOKUPS,
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    CodeRecord,
    Introspection,
    Lookup,
    OpenIDCode,
    PrivateKeyJwt,
    RefreshTokenGrant,
    Revocation,
    S256CodeChallenge,
)
from identity.oidc.tokens import EndUser

T = TypeVar("T")


def _monotonic() -> float:
    # Looked up at each call, not bound once: the clock is this module's time.
    return time.monotonic()


logger = logging.getLogger(__name__)

# Threads for token work on PostgreSQL. More only contend for the GIL: on two cores, 4
# served ~20% more refresh and code grants per CPU-second than 8 (bench/token_endpoint.py).
TOKEN_THREADS = 4


# Requests and responses


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._datalist[key].append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class StarletteOAuth2Request(OAuth2Request):  # type: ignore[misc]
    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers,
        query: list[tuple[str, str]],
        form: list[tuple[str, str]],
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self._args = dict(query)
        self._form = dict(form)
        self.payload = _Payload([*query, *form])

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass
class Answer:
    """What Authlib answered, until it becomes a Starlette response (outside the thread)."""

    status: int
    body: Any
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def location(self) -> str | None:
        return next((v for k, v in self.headers if k.lower() == "location"), None)

    @location.setter
    def location(self, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != "location"]
        self.headers.append(("Location", value))

    def response(self) -> Response:
        if isinstance(self.body, dict):
            content = json.dumps(self.body, separators=(",", ":")).encode()
        else:
            content = (self.body or "").encode()
        headers = dict(self.headers)
        return Response(content, status_code=self.status, headers=headers)


def _check_parameters(pairs: list[tuple[str, str]]) -> None:
    """The protocol's limits. That the parameters are text their readers checked: the
    boundary middleware the query, :func:`read_oauth_form` and ``read_form`` the bodies."""
    for key, value in pairs:
        if len(key) > 100 or len(value) > MAX_PARAMETER:
            raise ParameterError("A request parameter is too long.")
        if key == "nonce" and len(value) > MAX_NONCE:
            raise ParameterError("The nonce is too long.")
        if key == "state" and len(value) > MAX_STATE:
            raise ParameterError("The state is too long.")


def _check_basic_credentials(headers: Headers) -> None:
    """HTTP Basic client credentials, decoded as Authlib decodes them (base64, UTF-8, then
    form-urlencoded: RFC 6749 §2.3.1), must be text too: a ``%00`` in a client_id would
    otherwise reach the client lookup. Checked only where clients authenticate (token,
    revocation, introspection): elsewhere (/authorize) nothing decodes them, and a browser
    behind a Basic-auth proxy may send credentials in any encoding."""
    try:
        client_id, secret = extract_basic_authorization(headers)
    except UnicodeDecodeError:
        raise ParameterError("The Authorization header is not valid.") from None
    if not boundary.is_text(f"{client_id or ''}{secret or ''}"):
        raise RefusedParameterError
    if len(client_id or "") > MAX_PARAMETER or len(secret or "") > MAX_PARAMETER:
        raise ParameterError("A client credential is too long.")


class ParameterError(ValueError):
    """A parameter over the limits or not text (carebridge.http.boundary): answered
    invalid_request before Authlib sees it."""


class RefusedParameterError(ParameterError):
    """A parameter or a credential that is not text: the boundary's refusal (the access
    log says where, never what)."""

    def __init__(self) -> None:
        super().__init__(REFUSED_INPUT)


async def read_oauth_form(request: Request) -> list[tuple[str, str]]:
    """The urlencoded body of a client-authenticated endpoint, parsed from the bytes.

    Raises ParameterError for a wrong content type, a body over the limit, a malformed
    body or an oversized parameter.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise ParameterError("Send the body as application/x-www-form-urlencoded.")
    body = await read_bounded(request, MAX_BODY, ParameterError("The request body is too large."))
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=False, strict_parsing=False)
    except UnicodeDecodeError:
        raise ParameterError("The request body is not UTF-8.") from None
    # The input boundary: every name and value text (one look at them all).
    if not boundary.is_text("".join(part for pair in pairs for part in pair)):
        boundary.mark_refused(request.scope, "parameter")
        raise RefusedParameterError
    _check_parameters(pairs)
    names = [key for key, _ in pairs]
    if len(set(names)) != len(names):
        # RFC 6749 §3.2: request parameters must not be included more than once.
        raise ParameterError("A parameter is repeated.")
    return pairs


def invalid_request(description: str) -> Response:
    body = {"error": "invalid_request", "error_description": description}
    return Answer(400, body, _NO_STORE).response()


_NO_STORE = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
]


# The server


class Issuer(IssuerParameter):  # type: ignore[misc]
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


class AuthorizationServer(_AuthorizationServer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        super().__init__(scopes_supported=None)
        self.runtime = runtime
        issuer = runtime.settings.issuer
        parts = urlsplit(issuer)
        if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"):
            # Development and tests on loopback only; production issuers are https.
            os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
        # Authlib logs every issued token (access and refresh) at DEBUG: never let it.
        authlib_log = logging.getLogger("authlib")
        authlib_log.setLevel(max(authlib_log.getEffectiveLevel(), logging.INFO))
        self.register_token_generator("default", self._generate_token)
        self.register_client_auth_method("private_key_jwt", PrivateKeyJwt(runtime))
        self.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(), OpenIDCode(runtime)])
        self.register_grant(RefreshTokenGrant)
        self.register_grant(ClientCredentialsGrant)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)
        # Clients by ID, for client_cache_seconds; asked on the event loop and in the
        # token threads: one lock.
        self._clients: TTLCache[str, Client | None] = TTLCache(
            10_000, runtime.settings.client_cache_seconds, timer=_monotonic
        )
        self._clients_lock = threading.Lock()
        # Token work holds a pooled connection; more threads than connections only queue
        # (and on SQLite, whose writers take turns, one at a time avoids busy-waiting).
        # Its own threads: a plain executor hop costs half of anyio's (limiter, run vars).
        self.executor = ThreadPoolExecutor(
            max_workers=1 if runtime.settings.uses_sqlite else TOKEN_THREADS,
            thread_name_prefix="oidc-token",
        )
        self.issuer_parameter = Issuer(issuer)
        self.register_extension(self.issuer_parameter)

    # Authlib's integration points

    def query_client(self, client_id: str) -> Client | None:
        """A client by ID, from a short-lived cache (``client_cache_seconds``): every token
        request asks, and a registration changes rarely."""
        with self._clients_lock:
            try:
                return self._clients[client_id]  # None too: an unknown client, remembered
            except KeyError:
                pass
        found = clients.find(db(), client_id)
        if self.runtime.settings.client_cache_seconds and len(client_id) <= 100:
            with self._clients_lock:
                self._clients[client_id] = found
        return found

    def end_user(
        self,
        client: Client,
        account_id: str,
        auth_time: datetime,
        *,
        state: tokens.AccountState | None = None,
        grant_id: str | None = None,
    ) -> EndUser | None:
        return tokens.end_user(
            db, self.runtime, client, account_id, auth_time, state=state, grant_id=grant_id
        )

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Client credentials store nothing (the access token is a JWT); the code and
        refresh grants store their refresh token as they redeem what they were given
        (grants: ``save_token``, with :meth:`successor`)."""
        if token.get("refresh_token"):
            raise RuntimeError("a refresh token is stored by the grant that redeems")

    def successor(self, token: dict[str, Any], request: Any) -> dict[str, Any] | None:
        """The row of the refresh token in ``token``, if it has one (tokens.refresh_row)."""
        refresh = token.get("refresh_token")
        if not refresh or request.user is None:
            return None
        if request.refresh_token is not None:
            # RFC 6749 §6: the new refresh token keeps the old one's scope, even when this
            # request narrowed the access token's.
            previous = request.refresh_token
            family, auth_time, scope = previous.family_id, previous.auth_time, previous.scope
        else:
            code: CodeRecord = request.authorization_code
            family, auth_time, scope = code.family_id, code.auth_time, token["scope"]
        return tokens.refresh_row(
            self.runtime,
            request.client,
            token=refresh,
            family_id=family,
            account_id=request.user.account_id,
            scope=scope,
            auth_time=auth_time,
        )

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Authlib signals every token and revocation request; nothing listens."""

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        raise TypeError("build the OAuth2Request with oauth2_request() first")

    def create_json_request(self, request: Any) -> JsonRequest:
        raise NotImplementedError("no JSON-bodied endpoint here")

    def handle_response(self, status: int, body: Any, headers: Any) -> Answer:
        return Answer(status, body, list(headers))

    def validate_requested_scope(self, scope: str | None) -> None:
        for item in scope_rules.split(scope):
            if not scope_rules.is_known(item):
                raise InvalidScopeError()

    def _generate_token(
        self,
        grant_type: str,
        client: Client,
        *,
        user: EndUser | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        scope = scope or ""
        access, lifetime = tokens.mint_access_token(self.runtime, client, scope=scope, user=user)
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": lifetime,
            "scope": scope,
        }
        granted = scope.split()
        if user is not None:
            if include_refresh_token and scope_rules.OFFLINE_ACCESS in granted:
                token["refresh_token"] = tokens.new_token()
            if scope_rules.LAUNCH_PATIENT in granted and user.patient is not None:
                token["patient"] = user.patient
        return token

    # Running it

    def oauth2_request(
        self,
        request: Request,
        path: str,
        form: list[tuple[str, str]] | None = None,
        *,
        with_query: bool = True,
        authenticates_client: bool = False,
    ) -> StarletteOAuth2Request:
        """The request as Authlib reads it, its parameters checked (ParameterError);
        ``authenticates_client`` where a client may present Basic credentials."""
        query = list(request.query_params.multi_items()) if with_query else []
        _check_parameters(query)
        # The consent form echoes the checked query, but is itself a request: check again.
        _check_parameters(form or [])
        if authenticates_client:
            try:
                _check_basic_credentials(request.headers)
            except RefusedParameterError:
                boundary.mark_refused(request.scope, "parameter")
                raise
        # URLs come from the configured issuer, never from the Host header.
        oauth = StarletteOAuth2Request(
            request.method,
            f"{self.runtime.settings.issuer}{path}",
            request.headers,
            query,
            form or [],
        )
        oauth.request_id = getattr(request.state, "request_id", None)
        return oauth

    def answer_without_database(self, oauth: StarletteOAuth2Request) -> Answer | None:
        """A token response computed on the event loop, when the request needs no database:
        a client credentials grant from a client in the cache (``query_client``) that
        authenticates with its secret (the access token is a JWT, stored nowhere). None when
        it needs the database (a cache miss, a private_key_jwt assertion, whose ``jti`` is
        recorded, another grant): then :meth:`run` it, in a worker thread, in a transaction.

        Running it here saves the hop to a worker thread and the transaction, most of the
        grant's cost; the work is a few dozen microseconds (an ES256 signature).
        """
        form = oauth.form
        if form.get("grant_type") != "client_credentials" or "client_assertion" in form:
            return None
        try:
            with unbound():
                answer: Answer = self.create_token_response(oauth)
        except NoTransactionError:
            return None  # nothing was written: it runs again from the start, in a thread
        return answer

    async def answer_on_loop(self, oauth: StarletteOAuth2Request) -> Answer | None:
        """A token response computed on the event loop, no worker thread or transaction:
        :meth:`answer_without_database`, or, on PostgreSQL, a code exchange or refresh.

        For those, the row the grant looks up (grants.LOOKUPS) is fetched first, awaited
        on one of the loop's own connections (carebridge.db.loop_pool, autocommit);
        Authlib then runs with it (identity.oidc.context.Plan), and the grant's one write,
        the claim that redeems the code or token and stores its successor, runs after,
        atomic as one statement. Its answer is sent only if the claim succeeded.

        None, to :meth:`run` it in a worker thread, in a transaction, from the start,
        whenever that cannot answer it: the grant asked for anything else of the database
        (a client not in the cache, a subject to record, a reuse to revoke and audit), the
        claim was lost to a racing use (the thread then answers it as a reuse), or the
        database failed before the claim or refused it. Nothing was written in any of
        these cases. A database that did not answer within the budget before the claim
        raises DatabaseUnavailableError (503: a thread would wait as long again); a
        claim whose outcome is unknown (the connection lost as it ran) raises
        OutcomeUnknownError instead (see :func:`_claim`).
        """
        quick = self.answer_without_database(oauth)
        if quick is not None:
            return quick
        form = oauth.form
        found = LOOKUPS.get(form.get("grant_type", ""))
        connections = self.runtime.loop_connections
        if found is None or connections is None or "client_assertion" in form:
            return None
        parameter, lookup_for = found
        lookup = lookup_for(form.get(parameter, ""))
        if lookup is None or not connections.usable():
            return None
        return await self._answer_planned(oauth, connections, lookup)

    async def _answer_planned(
        self, oauth: StarletteOAuth2Request, connections: LoopConnections, lookup: Lookup
    ) -> Answer | None:
        statement, params = lookup
        dialect = connections.dialect
        try:
            async with connections.connection() as connection:
                row = await statement.first_on(connection, dialect, params)
                request_plan = Plan(dialect, {Plan.key(statement, params): row})
                try:
                    with planned(request_plan):
                        answer: Answer = self.create_token_response(oauth)
                except NoTransactionError:
                    return None
                if request_plan.write is None:
                    return answer
                write, values = request_plan.write
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

    async def run(self, work: Callable[[], T]) -> T:
        """Run synchronous Authlib work in a worker thread, in one transaction.

        If the awaiting request is cancelled, the work still runs to its commit (as a
        request whose client went away): it is never interrupted halfway.
        """

        def in_transaction() -> T:
            with self.unit():
                return work()

        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # request ID and the like, as anyio would
        return await loop.run_in_executor(self.executor, context.run, in_transaction)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """The request's transaction, as an ORM Session."""
        with self.unit() as unit:
            yield unit.session

    @contextmanager
    def unit(self) -> Iterator[Unit]:
        """The request's transaction (:class:`identity.oidc.context.Unit`), reachable from
        Authlib's callbacks: committed if the block ends normally, else rolled back."""
        with self.runtime.engine.connect() as connection:
            unit = Unit(connection)
            try:
                with connection.begin(), bound(unit):
                    yield unit
                    unit.finish()
            finally:
                unit.close()


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


def server_for(request: Request) -> AuthorizationServer:
    """The app's one server (built on first use from its runtime)."""
    state = request.app.state
    server: AuthorizationServer | None = getattr(state, "oidc_server", None)
    if server is None:
        server = AuthorizationServer(request.app.state.runtime)
        state.oidc_server = server
    return server
