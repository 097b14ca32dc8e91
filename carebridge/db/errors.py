"""What a database failure means to a caller: "not now" (a 503), "maybe done" (never
retried) or a fault (a 500); and one safe line about it."""

from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from carebridge.db import deadlines


class DatabaseError(Exception):
    """The database is unreachable or refused an operation; the message is one safe line."""


class DatabaseUnavailableError(DatabaseError):
    """The database did not answer within the budget, or cannot be reached for now:
    nothing was done, and the same request may succeed later (HTTP 503)."""


class OutcomeUnknownError(DatabaseError):
    """A write was sent and its answer lost (the connection went away as it ran): it may
    have been done. Never "try again" (a retry would do it twice): HTTP 500."""


def outcome_unknown(exc: BaseException) -> bool:
    """Whether ``exc`` says a write may or may not have been done: a COMMIT cut off by the
    client's deadline or a lost connection (:mod:`carebridge.db.deadlines`), or a write
    that reported :class:`OutcomeUnknownError` (a token claim on the event loop)."""
    if isinstance(exc, OutcomeUnknownError):
        return True
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, deadlines.CommitOutcomeUnknownError)


# PostgreSQL's conditions that say "not now" rather than "not this": query_canceled (a
# statement or the client's cancel past the budget), lock_not_available (lock_timeout),
# too_many_connections, admin_shutdown, crash_shutdown, cannot_connect_now; and every
# connection_exception (class 08). Everything else (a deadlock, a serialization failure,
# a program limit, disk full, an I/O error) is a fault someone must look at: a 500 with
# its traceback, never a 503 a client retries into the same fault.
TRANSIENT_SQLSTATES = frozenset({"57014", "55P03", "53300", "57P01", "57P02", "57P03"})


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unavailable for now (too slow, unreachable,
    locked) rather than that the request or the code is wrong: a 503, not a 500.

    On PostgreSQL: a connection lost or refused (the driver's own errors carry no
    SQLSTATE; the server's class 08), a pooled connection not free in time, or one of
    :data:`TRANSIENT_SQLSTATES`. SQLite says so for a lock it waited on in vain, and
    otherwise (a missing table, bad SQL) uses the same class for mistakes, which stay
    500s. A write whose outcome is unknown is never "unavailable": see
    :func:`outcome_unknown`.
    """
    if isinstance(exc, DatabaseUnavailableError | PoolTimeoutError):
        return True
    if not isinstance(exc, DBAPIError) or outcome_unknown(exc):
        return False
    if exc.connection_invalidated:
        return True
    original = exc.orig
    if isinstance(original, sqlite3.OperationalError):
        return str(original).startswith(("database is locked", "database table is locked"))
    if not isinstance(original, psycopg.OperationalError):
        return False
    sqlstate = original.sqlstate
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in TRANSIENT_SQLSTATES


def describe_error(exc: BaseException) -> str:
    """One line about a driver error, without SQL, parameters or credentials."""
    original = getattr(exc, "orig", None) or exc
    first_line = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return first_line or type(original).__name__
