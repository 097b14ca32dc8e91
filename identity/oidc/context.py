"""What Authlib's callbacks reach without being passed it: the request's transaction;
and the provider's paths and request limits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sqlalchemy.orm import Session

AUTHORIZE_PATH = "/authorize"
TOKEN_PATH = "/oauth2/token"  # noqa: S105  (a path)
USERINFO_PATH = "/oauth2/userinfo"
REVOKE_PATH = "/oauth2/revoke"
INTROSPECT_PATH = "/oauth2/introspect"
END_SESSION_PATH = "/end-session"

# Longest parameter accepted anywhere (a client assertion is the longest legitimate one).
MAX_PARAMETER = 4096
MAX_NONCE = 255
MAX_STATE = 1024

_DB: ContextVar[Session | None] = ContextVar("oidc_db", default=None)


class NoTransactionError(RuntimeError):
    """:func:`db` was called where no transaction is open: the work needs the database
    (the token endpoint then runs it again, in a worker thread, in a transaction)."""


def db() -> Session:
    """The transaction of the request being handled (Authlib's callbacks take none)."""
    session = _DB.get()
    if session is None:
        raise NoTransactionError("no transaction is open here")
    return session


@contextmanager
def unbound() -> Iterator[None]:
    """No transaction for the duration of the block: :func:`db` raises NoTransactionError."""
    reset = _DB.set(None)
    try:
        yield
    finally:
        _DB.reset(reset)


@contextmanager
def bound(session: Session) -> Iterator[Session]:
    """Make ``session`` the one :func:`db` answers, for the duration of the block."""
    reset = _DB.set(session)
    try:
        yield session
    finally:
        _DB.reset(reset)
