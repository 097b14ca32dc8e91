"""Helpers for the tests of step-up and account changes (change password, sign out
everywhere, delete the account): a patient with a password, a verified address and an
authenticator; stepping up over HTTP; an app's grant; and the e-mails sent to an address,
read by delivering the outbox."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx2
import pyotp
from sqlalchemy import update
from starlette.testclient import TestClient

from carebridge import mail, outbox
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity import accounts
from identity.credentials import password
from identity.models import AuthSession, LoginIdentifier
from tests.identity import factories
from tests.identity.oidc import helpers

PASSWORD = "a long enough passphrase"
LOGIN = "pat@example.org"


@dataclass(frozen=True)
class Patient:
    account_id: str
    app: pyotp.TOTP
    login: str


def patient(runtime: Runtime, *, login: str = LOGIN, verified: bool = True) -> Patient:
    """An account with a password, an authenticator, and an address verified or not."""
    hashed = password.hash_password(runtime.settings, PASSWORD)
    with transaction(runtime.sessions) as db:
        account_id = accounts.create(db, runtime.keyring, login=login, password_hash=hashed)
        if verified:
            db.execute(
                update(LoginIdentifier)
                .where(LoginIdentifier.account_id == account_id)
                .values(verified_at=utcnow())
            )
    return Patient(account_id, factories.totp(runtime, account_id), login)


def next_code(app: pyotp.TOTP) -> str:
    """The next time step's code: inside the window, and never the one just used."""
    return app.at(time.time() + 30)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_form(client: TestClient, page: str, action: str, data: dict[str, str]) -> httpx2.Response:
    """Submit a form as a browser does: the page first (for its CSRF token)."""
    form_page = client.get(page)
    assert form_page.status_code == 200, form_page.text
    token = factories.csrf(form_page.text)
    return client.post(action, data={"csrf_token": token, **data}, follow_redirects=False)


def step_up(client: TestClient, code: str, *, method: str = "totp") -> httpx2.Response:
    """Confirm it's you on /reauth with an authenticator code (or a recovery code)."""
    field = "code" if method == "totp" else "recovery_code"
    return post_form(client, "/reauth", "/reauth", {"method": method, field: code})


def age_step_up(runtime: Runtime, account_id: str, *, minutes: float) -> None:
    """Move the clock: the account's sessions proved their second factor ``minutes`` ago."""
    with transaction(runtime.sessions) as db:
        db.execute(
            update(AuthSession)
            .where(AuthSession.account_id == account_id)
            .values(stepped_up_at=utcnow() - timedelta(minutes=minutes))
        )


def grant(client: TestClient, runtime: Runtime) -> tuple[helpers.Registered, dict[str, Any]]:
    """An app the signed-in ``client`` allowed (offline access): its tokens."""
    registered = helpers.register(runtime, scopes="openid offline_access", name="Scheduler")
    verifier, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, scope="openid offline_access")
    code = helpers.approve(client, params)["code"][0]
    response = helpers.exchange(client, registered, code, verifier)
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    assert "refresh_token" in tokens
    return registered, tokens


def refreshes(client: TestClient, registered: helpers.Registered, token: str) -> bool:
    response = client.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": token},
        auth=helpers.basic(registered),
    )
    return response.status_code == 200


class _Capture:
    channel = mail.CHANNEL

    def __init__(self) -> None:
        self.sent: list[dict[str, str]] = []

    def deliver(self, message: outbox.Message) -> None:
        self.sent.append(dict(message.content))


def emails_to(runtime: Runtime, address: str) -> list[dict[str, str]]:
    """The e-mails to ``address`` waiting in the outbox, delivered now (each is read
    once): ``to``, ``subject``, ``text``, ``html``."""
    capture = _Capture()
    outbox.drain(runtime, outbox.Channels(handlers={mail.CHANNEL: capture}))
    return [email for email in capture.sent if email["to"] == address]
