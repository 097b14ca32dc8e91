"""Changing the password while signed in: after a step-up, with sign-up's rules; other
sessions and every app's grant end, this session continues, a notice goes to a verified
address. Through HTTP, both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity import throttle
from identity.credentials import password
from identity.flows import signin
from identity.models import PasswordCredential
from tests.identity import factories
from tests.identity.account_changes import (
    PASSWORD,
    bearer,
    emails_to,
    grant,
    patient,
    post_form,
    refreshes,
)

NEW = "correct horse battery staple again"


def _verifies(runtime: Runtime, account_id: str, typed: str) -> bool:
    with runtime.sessions() as db:
        credential = db.get(PasswordCredential, account_id)
        assert credential is not None
        return password.verify(runtime.settings, credential.hash, typed).ok


def _actions(runtime: Runtime) -> list[str]:
    with runtime.sessions() as db:
        return [r.action for r in db.scalars(select(AuditRecord).order_by(AuditRecord.seq))]


def test_changing_the_password_ends_other_sessions_and_grants_and_sends_a_notice(
    client: TestClient, runtime: Runtime
) -> None:
    pat = patient(runtime)
    other_device = factories.session(runtime, pat.account_id, level=2)
    mine = factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    registered, tokens = grant(client, runtime)
    changed = post_form(client, "/account/password", "/account/password", {"new_password": NEW})
    assert changed.status_code == 303, changed.text
    assert changed.headers["location"] == "/account?done=password"
    fresh = client.cookies.get("carebridge_session")
    assert fresh and fresh != mine
    assert "Your password was changed" in client.get("/account?done=password").text
    # The other device is signed out, the old token of this one too.
    assert client.get("/api/v1/sessions", headers=bearer(other_device)).status_code == 401
    assert client.get("/api/v1/sessions", headers=bearer(mine)).status_code == 401
    assert client.get("/api/v1/sessions", headers=bearer(fresh)).status_code == 200
    # The app's refresh token and access token are withdrawn.
    assert not refreshes(client, registered, tokens["refresh_token"])
    assert client.get("/oauth2/userinfo", headers=bearer(tokens["access_token"])).status_code == 401
    assert _verifies(runtime, pat.account_id, NEW)
    assert not _verifies(runtime, pat.account_id, PASSWORD)
    (notice,) = emails_to(runtime, pat.login)
    assert notice["subject"] == "Your password was changed"
    assert "http://127.0.0.1:8000/password/forgot" in notice["text"]
    assert "identity.password.change" in _actions(runtime)
    assert "identity.session.revoke_others" in _actions(runtime)


def test_the_new_password_follows_the_sign_up_rules(client: TestClient, runtime: Runtime) -> None:
    pat = patient(runtime)
    token = factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    short = post_form(client, "/account/password", "/account/password", {"new_password": "short"})
    assert short.status_code == 400
    assert "at least" in short.text
    common = client.post(
        "/api/v1/account/password", json={"new_password": "password1234"}, headers=bearer(token)
    )
    assert common.status_code == 400
    assert common.json()["errors"][0]["field"] == "new_password"
    with_login = client.post(
        "/api/v1/account/password",
        json={"new_password": f"{pat.login} is mine"},
        headers=bearer(token),
    )
    assert with_login.status_code == 400
    assert _verifies(runtime, pat.account_id, PASSWORD)
    assert emails_to(runtime, pat.login) == []


def test_api_change_returns_the_sessions_new_token(client: TestClient, runtime: Runtime) -> None:
    pat = patient(runtime)
    token = factories.session(runtime, pat.account_id, level=2, stepped_up=True)
    changed = client.post(
        "/api/v1/account/password", json={"new_password": NEW}, headers=bearer(token)
    )
    assert changed.status_code == 200, changed.text
    fresh = changed.json()["session_token"]
    assert changed.json()["level"] == 2
    assert client.get("/api/v1/sessions", headers=bearer(token)).status_code == 401
    assert client.get("/api/v1/sessions", headers=bearer(fresh)).status_code == 200
    # Still stepped up for the rest of its window: the change proved nothing new.
    again = client.post(
        "/api/v1/account/password", json={"new_password": NEW + "!"}, headers=bearer(fresh)
    )
    assert again.status_code == 200


def test_no_notice_goes_to_an_unverified_address(client: TestClient, runtime: Runtime) -> None:
    pat = patient(runtime, verified=False)
    token = factories.session(runtime, pat.account_id, level=2, stepped_up=True)
    changed = client.post(
        "/api/v1/account/password", json={"new_password": NEW}, headers=bearer(token)
    )
    assert changed.status_code == 200
    assert emails_to(runtime, pat.login) == []


def test_an_account_without_a_password_has_none_to_change(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    token = factories.session(runtime, account_id, level=2, stepped_up=True)
    refused = client.post(
        "/api/v1/account/password", json={"new_password": NEW}, headers=bearer(token)
    )
    assert refused.status_code == 409


# Throttles (identity/throttle.py: PASSWORD_CHANGE_ACCOUNT, PASSWORD_CHANGE_ADDRESS)


def test_changing_the_password_in_a_loop_is_refused(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stolen, stepped-up session trying password after password (each one hashed, each
    one ending the owner's other sessions and e-mailing them): 5 free and one that earns a
    delay go through, then the account is refused with sign-in's uniform answer for that
    delay and nothing more is changed."""
    now = throttle.utcnow()
    monkeypatch.setattr(throttle, "utcnow", lambda: now)
    allowed = throttle.PASSWORD_CHANGE_ACCOUNT.free + 1
    pat = patient(runtime)
    token = factories.session(runtime, pat.account_id, level=2, stepped_up=True)
    for n in range(allowed):
        changed = client.post(
            "/api/v1/account/password", json={"new_password": f"{NEW} {n}"}, headers=bearer(token)
        )
        assert changed.status_code == 200, changed.text
        token = changed.json()["session_token"]
    refused = client.post(
        "/api/v1/account/password", json={"new_password": NEW + " more"}, headers=bearer(token)
    )
    assert refused.status_code == 429
    assert refused.json()["detail"] == signin.TOO_MANY
    assert _verifies(runtime, pat.account_id, f"{NEW} {allowed - 1}")
    assert ("identity.password.change", "denied") in _outcomes(runtime)


def test_changing_passwords_from_one_client_address_past_its_budget_is_refused(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = throttle.utcnow()
    monkeypatch.setattr(throttle, "utcnow", lambda: now)
    pat = patient(runtime)
    factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    # The test client's address has used its free attempts (other accounts' changes).
    limit = throttle.address_limit(runtime.keyring, "testclient", throttle.PASSWORD_CHANGE_ADDRESS)
    store = throttle.store_for(runtime.settings)
    with transaction(runtime.sessions) as db:
        for _ in range(throttle.PASSWORD_CHANGE_ADDRESS.free + 1):
            assert store.attempt(db, [limit], throttle.utcnow()) is not None
    refused = post_form(client, "/account/password", "/account/password", {"new_password": NEW})
    assert refused.status_code == 429
    assert "Too many attempts" in refused.text
    assert _verifies(runtime, pat.account_id, PASSWORD)


def _outcomes(runtime: Runtime) -> list[tuple[str, str]]:
    with runtime.sessions() as db:
        return [(r.action, str(r.outcome)) for r in db.scalars(select(AuditRecord))]
