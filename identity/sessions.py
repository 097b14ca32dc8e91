"""Server-side sessions: an opaque token in a cookie (or a bearer header), its hash here.

A session gets a new token whenever its authentication level changes (sign-in, second
factor, re-authentication), so a token seen before sign-in is worthless after. Sessions
end after ``session_idle_minutes`` without use and ``session_absolute_hours`` after the
sign-in that began them, whichever comes first.

A session records its first factor (``first_factor``: ``"password"`` or
``"upstream:<provider>"``, the one last proved in it; NULL for sessions from before
migration 0022, read as unknown): recovering a lost second factor needs a session that
proved the password (docs/threat-model.md, "Lost second factor").

One lock orders every write to an account's sessions (:func:`lock_account_sessions`):
whatever creates or raises a session, and whatever ends all of them (a password reset or
change, sign out everywhere, disabling, deletion, recovery), takes it first in its
transaction. Without it, on PostgreSQL, a second factor proved just as a reset commits
writes its level-2 session after the reset's DELETE looked, and it survives.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.orm import Session, make_transient_to_detached
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.responses import Response

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.http import boundary, cookies
from carebridge.http.paths import MACHINE_PATHS
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity.accounts import ACTIVE
from identity.models import Account, AuthSession, new_id

FIRST_FACTOR = 1
SECOND_FACTOR = 2
# How a session's first factor was proved (AuthSession.first_factor).
PASSWORD = "password"  # noqa: S105  (a kind of factor, not a password)
_UPSTREAM = "upstream:"
# Writing last_seen_at on every request would turn each page view into a write.
_TOUCH_EVERY = timedelta(seconds=60)
_STATE_KEY = "auth_session"
_SESSIONS: Table = AuthSession.__table__  # type: ignore[assignment]
_INSERT_SESSION = insert(_SESSIONS)
_COLUMNS = tuple(column.key for column in _SESSIONS.columns)


def cookie_name(runtime: Runtime) -> str:
    return cookies.SESSION.name(runtime.settings.issuer_is_https)


def upstream(provider: str) -> str:
    """The first factor of a sign-in through the upstream provider ``provider``."""
    return f"{_UPSTREAM}{provider}"


def upstream_provider(session: AuthSession) -> str | None:
    """The provider the session's first factor was proved with, if it was one."""
    factor = session.first_factor or ""
    return factor.removeprefix(_UPSTREAM) if factor.startswith(_UPSTREAM) else None


def proved_password(session: AuthSession) -> bool:
    """Whether the session's first factor was the account's password (a session from
    before 0022 recorded none: no)."""
    return session.first_factor == PASSWORD


# The lock


@dataclass(frozen=True)
class AccountLock:
    """Proof that this transaction holds ``account_id``'s session lock; the functions
    below that write sessions take it, so none can be called without it. Valid only
    in the transaction that took it."""

    account_id: str
    status: str  # the account's, read under the lock


def lock_account_sessions(db: Session, account_id: str) -> AccountLock | None:
    """Take the account's session lock (None: no such account, e.g. deleted meanwhile).

    The account row, ``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's transactions begin
    IMMEDIATE, so there writers are serial already and this is a plain read. Why a lock
    and not a "sessions ended at" stamp re-checked before writing: under READ COMMITTED
    a check and the INSERT after it can still straddle a commit; only mutual exclusion
    closes that, and the row lock is the one both sides already know how to take.

    Take it FIRST in the transaction, before any other row is locked or written (the
    session that will be replaced is read after it): every caller acquiring it in the
    same order is what keeps two of them from deadlocking.
    """
    status = db.scalar(select(Account.status).where(Account.id == account_id).with_for_update())
    return None if status is None else AccountLock(account_id, status)


@dataclass(frozen=True)
class Started:
    token: str
    session: AuthSession


def _token_hash(runtime: Runtime, token: str) -> str:
    return runtime.keyring.lookup_hash("session", token)


def start(
    db: Session,
    runtime: Runtime,
    lock: AccountLock,
    *,
    level: int,
    first_factor: str | None = None,
    user_agent: str = "",
    replacing: AuthSession | None = None,
    stepped_up: bool = False,
) -> Started:
    """A new session (sign-in), or the next one for ``replacing`` at a new level, for
    the account ``lock`` is held for.

    Replacing keeps the absolute expiry of the sign-in that began the session, so stepping
    up or re-authenticating never stretches its lifetime. ``stepped_up``: the second factor
    was proved just now; otherwise the replaced session's last proof of it is kept.
    ``first_factor``: the one proved just now (:data:`PASSWORD`, :func:`upstream`); a new
    session needs one, a replacement keeps the replaced session's without.
    """
    account_id = lock.account_id
    if replacing is not None and replacing.account_id != account_id:
        raise ValueError("a session is replaced only by one of its own account")
    if first_factor is None:
        if replacing is None:
            raise ValueError("a new session records its first factor")
        first_factor = replacing.first_factor
    now = utcnow()
    stepped_up_at = replacing.stepped_up_at if replacing is not None else None
    if stepped_up:
        stepped_up_at = now
    settings = runtime.settings
    expires = now + timedelta(hours=settings.session_absolute_hours)
    if replacing is not None:
        expires = min(expires, replacing.expires_at)
        _discard(db, replacing)
    token = secrets.token_urlsafe(32)
    session = AuthSession(
        token_hash=_token_hash(runtime, token),
        handle=new_id("ses"),
        account_id=account_id,
        level=level,
        created_at=now if replacing is None else replacing.created_at,
        authenticated_at=now,
        stepped_up_at=stepped_up_at,
        first_factor=first_factor,
        last_seen_at=now,
        expires_at=expires,
        user_agent=user_agent[:200],
    )
    # A plain INSERT, then the object joins the session as if loaded: the same row and
    # the same persistent object as add() + flush(), for a fraction of the unit of work's
    # cost on the sign-in path. Anything pending is flushed first, as flush() would.
    db.flush()
    db.connection().execute(_INSERT_SESSION, {name: getattr(session, name) for name in _COLUMNS})
    make_transient_to_detached(session)
    db.add(session)
    return Started(token, session)


def load(db: Session, runtime: Runtime, token: str) -> AuthSession | None:
    """The live session for a token, or None; an expired one, or one of an account that
    is no longer active (disabled), is deleted on the way."""
    session = db.get(AuthSession, _token_hash(runtime, token))
    if session is None:
        return None
    now = utcnow()
    idle = timedelta(minutes=runtime.settings.session_idle_minutes)
    expired = now >= session.expires_at or now - session.last_seen_at >= idle
    status = db.scalar(select(Account.status).where(Account.id == session.account_id))
    if expired or status != ACTIVE:
        _discard(db, session)
        return None
    if now - session.last_seen_at >= _TOUCH_EVERY:
        session.last_seen_at = now
    return session


def _discard(db: Session, session: AuthSession) -> None:
    """Delete a session row that a concurrent request may have deleted already.

    ``db.delete()`` would fail that request (the ORM expects to delete exactly one row);
    two sign-ins racing in one browser, or a sign-out racing an expiry, are no error.
    """
    if session in db:
        db.expunge(session)
    db.execute(delete(AuthSession).where(AuthSession.token_hash == session.token_hash))


def end(db: Session, session: AuthSession) -> None:
    _discard(db, session)


def for_account(db: Session, account_id: str) -> list[AuthSession]:
    query = select(AuthSession).where(AuthSession.account_id == account_id)
    return list(db.scalars(query.order_by(AuthSession.last_seen_at.desc())))


def revoke(db: Session, account_id: str, handle: str) -> bool:
    """End one of the account's sessions by its public handle; False if not theirs."""
    result = db.execute(
        delete(AuthSession).where(
            AuthSession.account_id == account_id, AuthSession.handle == handle
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def revoke_all(db: Session, lock: AccountLock, *, keep: AuthSession | None = None) -> None:
    """End every session of the locked account but ``keep``."""
    query = delete(AuthSession).where(AuthSession.account_id == lock.account_id)
    if keep is not None:
        query = query.where(AuthSession.token_hash != keep.token_hash)
    db.execute(query)


def revoke_everywhere(
    db: Session, lock: AccountLock, *, actor: str, request_id: str | None
) -> None:
    """End every session of the locked account, the caller's too, audited."""
    account_id = lock.account_id
    revoke_all(db, lock)
    audit.append(
        db,
        actor=actor,
        action="identity.session.revoke_all",
        outcome=Outcome.ALLOWED,
        target=f"account:{account_id}",
        request_id=request_id,
    )


def revoke_others(
    db: Session, lock: AccountLock, current: AuthSession, *, request_id: str | None
) -> None:
    """End the locked account's sessions other than ``current``, audited: after a factor
    change made for fear of compromise, an intruder's session must not outlive it."""
    revoke_all(db, lock, keep=current)
    actor = f"account:{current.account_id}"
    audit.append(
        db,
        actor=actor,
        action="identity.session.revoke_others",
        outcome=Outcome.ALLOWED,
        target=actor,
        request_id=request_id,
    )


# Requests


def user_agent(connection: HTTPConnection) -> str:
    """The User-Agent as its sender wrote it, for the list of signed-in devices: header
    bytes reach Starlette as Latin-1, and apps send UTF-8 (a device named "Zoë")."""
    text = connection.headers.get("user-agent", "").encode("latin-1").decode("utf-8", "replace")
    if boundary.is_text(text):
        return text
    # A C1 control spelled in UTF-8 passes the boundary's byte rule: shown as unreadable.
    return "".join(c if boundary.is_text(c) else "\ufffd" for c in text)


def presented_token(connection: HTTPConnection) -> str | None:
    """The session token a request carries: the cookie (pages) or a bearer header (API).

    The API never reads the cookie: it has no CSRF check, so a cookie must not act there.
    """
    authorization = connection.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip()
    if connection.url.path.startswith(MACHINE_PATHS):
        return None
    runtime: Runtime = connection.app.state.runtime
    return connection.cookies.get(cookie_name(runtime)) or None


async def current(connection: HTTPConnection) -> AuthSession | None:
    """The request's live session, looked up once per request."""
    state = connection.scope.setdefault("state", {})
    if _STATE_KEY in state:
        cached: AuthSession | None = state[_STATE_KEY]
        return cached
    token = presented_token(connection)
    session = None
    if token:
        runtime: Runtime = connection.app.state.runtime

        def lookup() -> AuthSession | None:
            with runtime.sessions.begin() as db:
                return load(db, runtime, token)

        session = await run_in_threadpool(lookup)
    state[_STATE_KEY] = session
    return session


def set_cookie(response: Response, runtime: Runtime, token: str) -> None:
    # No Max-Age: the cookie ends with the browser, the session on the server at the latest
    # at its absolute expiry.
    response.set_cookie(
        cookie_name(runtime),
        token,
        path="/",
        httponly=True,
        samesite="lax",
        secure=runtime.settings.issuer_is_https,
    )


def clear_cookie(response: Response, runtime: Runtime) -> None:
    response.delete_cookie(
        cookie_name(runtime),
        path="/",
        httponly=True,
        samesite="lax",
        secure=runtime.settings.issuer_is_https,
    )
