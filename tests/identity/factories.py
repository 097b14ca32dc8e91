"""Tiny builders for identity tests: accounts, sessions and authenticators straight in the
database, without going through sign-up."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pyotp
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from carebridge.db import transaction
from carebridge.keyring import associated_data
from carebridge.runtime import Runtime
from identity import sessions
from identity.models import Account, TotpCredential, new_id

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def account(runtime: Runtime) -> str:
    account_id = new_id("acc")
    with transaction(runtime.sessions) as db:
        db.add(Account(id=account_id, created_at=datetime.now(UTC), status="active"))
    return account_id


def totp(runtime: Runtime, account_id: str) -> pyotp.TOTP:
    """A confirmed authenticator for the account; returns the app's side of it."""
    secret = pyotp.random_base32(32)
    blob = runtime.keyring.encrypt(secret.encode(), associated_data("totp", account_id))
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as db:
        db.add(
            TotpCredential(
                account_id=account_id, secret_encrypted=blob, created_at=now, confirmed_at=now
            )
        )
    return pyotp.TOTP(secret)


def lock(db: Session, account_id: str) -> sessions.AccountLock:
    """The account's session lock, in ``db``'s transaction (the account must exist)."""
    held = sessions.lock_account_sessions(db, account_id)
    assert held is not None, account_id
    return held


def session(
    runtime: Runtime,
    account_id: str,
    *,
    level: int = 1,
    user_agent: str = "",
    stepped_up: bool = False,
    first_factor: str = sessions.PASSWORD,
) -> str:
    """A session for the account at ``level`` (``stepped_up``: its second factor proved
    just now, for tests of what comes after a step-up), begun with ``first_factor``;
    returns its token."""
    with transaction(runtime.sessions) as db:
        started = sessions.start(
            db,
            runtime,
            lock(db, account_id),
            level=level,
            first_factor=first_factor,
            user_agent=user_agent,
            stepped_up=stepped_up,
        )
    return started.token


def sign_in(
    client: TestClient,
    runtime: Runtime,
    account_id: str,
    *,
    level: int = 1,
    stepped_up: bool = False,
) -> str:
    """A session, with its cookie set on ``client``; returns its token."""
    token = session(runtime, account_id, level=level, stepped_up=stepped_up)
    use_token(client, runtime, token)
    return token


def use_token(client: TestClient, runtime: Runtime, token: str) -> None:
    """Make ``client`` present ``token`` as its session cookie, replacing any other."""
    name = sessions.cookie_name(runtime)
    for cookie in list(client.cookies.jar):
        if cookie.name == name:
            client.cookies.delete(name, domain=cookie.domain, path=cookie.path)
    # The domain the cookie jar files TestClient's "testserver" under.
    client.cookies.set(name, token, domain="testserver.local")


def csrf(html: str) -> str:
    """The csrf_token of the first form on a page."""
    match = _CSRF.search(html)
    assert match, "no csrf_token on the page"
    return match.group(1)
