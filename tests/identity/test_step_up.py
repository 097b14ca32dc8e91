"""Step-up: sensitive changes need the second factor proved in the last few minutes
(``step_up_minutes``, default 5), never the password alone. Through HTTP, both databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.audit import AuditRecord
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from carebridge.utc import utcnow
from identity import authn
from identity.credentials import recovery, totp
from identity.models import AuthSession, UpstreamIdentity, new_id
from tests.identity import factories
from tests.identity.account_changes import (
    PASSWORD,
    age_step_up,
    bearer,
    next_code,
    patient,
    post_form,
    step_up,
)


@pytest.fixture
def optional_mfa(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, Runtime]]:
    runtime = Runtime.build(
        Settings(data_dir=tmp_path / "data", database_url=database_url, mfa_required=False)
    )
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        yield client, runtime
    runtime.close()


def _confirmed(runtime: Runtime, account_id: str) -> bool:
    with runtime.sessions() as db:
        return totp.confirmed(db, account_id) is not None


def _current(runtime: Runtime, client: TestClient) -> AuthSession:
    token = client.cookies.get("carebridge_session")
    assert token
    with runtime.sessions() as db:
        row = db.get(AuthSession, runtime.keyring.lookup_hash("session", token))
    assert row is not None
    return row


def _audit(runtime: Runtime) -> list[tuple[str, str]]:
    with runtime.sessions() as db:
        rows = db.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all()
        return [(row.action, row.outcome) for row in rows]


def test_stolen_session_with_password_cannot_remove_the_second_factor(
    optional_mfa: tuple[TestClient, Runtime],
) -> None:
    client, runtime = optional_mfa
    pat = patient(runtime)
    factories.sign_in(client, runtime, pat.account_id, level=2)  # the stolen session
    page = client.get("/reauth?next=/account/security")
    assert 'autocomplete="current-password"' not in page.text  # no password form at all
    typed = post_form(client, "/reauth", "/reauth", {"method": "password", "password": PASSWORD})
    assert typed.status_code == 400
    assert "not your password" in typed.text
    assert not authn.is_stepped_up(_current(runtime, client), runtime.settings)
    removed = post_form(client, "/account/security", "/account/security/totp/remove", {})
    assert removed.status_code == 303
    assert removed.headers["location"] == "/reauth?next=%2Faccount%2Fsecurity"
    assert _confirmed(runtime, pat.account_id)
    assert ("identity.reauth.password", "denied") in _audit(runtime)


def test_stolen_session_with_password_cannot_step_up_through_the_api(
    client: TestClient, runtime: Runtime
) -> None:
    pat = patient(runtime)
    token = factories.session(runtime, pat.account_id, level=2)
    typed = client.post("/api/v1/reauth", json={"password": PASSWORD}, headers=bearer(token))
    assert typed.status_code == 400
    assert typed.json()["errors"][0]["field"] == "password"
    refused = client.post("/api/v1/mfa/recovery-codes", headers=bearer(token))
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["step_up"] == "reauth"
    assert "/api/v1/reauth" in refused.json()["detail"]


def test_an_authenticator_code_steps_up_for_five_minutes_only(
    client: TestClient, runtime: Runtime
) -> None:
    pat = patient(runtime)
    factories.sign_in(client, runtime, pat.account_id, level=2)
    assert client.get("/account/password", follow_redirects=False).status_code == 303
    done = step_up(client, pat.app.now())
    assert done.status_code == 303
    assert client.get("/account/password").status_code == 200
    age_step_up(runtime, pat.account_id, minutes=4.5)
    assert client.get("/account/password", follow_redirects=False).status_code == 200
    age_step_up(runtime, pat.account_id, minutes=5.5)
    late = client.get("/account/password", follow_redirects=False)
    assert late.status_code == 303
    assert late.headers["location"] == "/reauth?next=%2Faccount%2Fpassword"
    assert ("identity.reauth.totp", "allowed") in _audit(runtime)


def test_the_step_up_window_is_a_setting(tmp_path: Path, database_url: str) -> None:
    runtime = Runtime.build(
        Settings(data_dir=tmp_path / "data", database_url=database_url, step_up_minutes=15)
    )
    try:
        with TestClient(create_app(runtime)) as client:
            pat = patient(runtime)
            factories.sign_in(client, runtime, pat.account_id, level=2)
            step_up(client, pat.app.now())
            age_step_up(runtime, pat.account_id, minutes=10)
            assert client.get("/account/password", follow_redirects=False).status_code == 200
    finally:
        runtime.close()


def test_a_recovery_code_steps_up_and_is_used_up(client: TestClient, runtime: Runtime) -> None:
    pat = patient(runtime)
    with runtime.sessions.begin() as db:
        codes = recovery.regenerate(db, runtime, pat.account_id)
    token = factories.session(runtime, pat.account_id, level=2)
    done = client.post("/api/v1/reauth", json={"recovery_code": codes[0]}, headers=bearer(token))
    assert done.status_code == 200, done.text
    assert done.json()["stepped_up"] is True
    fresh = done.json()["session_token"]
    again = client.post("/api/v1/reauth", json={"recovery_code": codes[0]}, headers=bearer(fresh))
    assert again.status_code == 400
    assert client.post("/api/v1/mfa/recovery-codes", headers=bearer(fresh)).status_code == 200


def test_signing_in_with_the_second_factor_is_a_step_up(
    client: TestClient, runtime: Runtime
) -> None:
    pat = patient(runtime)
    signin_page = client.get("/signin")
    signed_in = client.post(
        "/signin",
        data={
            "csrf_token": factories.csrf(signin_page.text),
            "login": pat.login,
            "password": PASSWORD,
        },
        follow_redirects=False,
    )
    assert signed_in.status_code == 303, signed_in.text
    # The first factor alone is not a step-up (and not even a finished sign-in).
    assert client.get("/account/delete", follow_redirects=False).status_code == 303
    challenged = post_form(client, "/mfa/challenge", "/mfa/challenge", {"code": pat.app.now()})
    assert challenged.status_code == 303
    assert client.get("/account/delete").status_code == 200


def test_sessions_from_before_step_up_are_not_stepped_up(
    client: TestClient, runtime: Runtime
) -> None:
    pat = patient(runtime)
    factories.sign_in(client, runtime, pat.account_id, level=2)  # stepped_up_at is NULL
    assert _current(runtime, client).stepped_up_at is None
    refused = client.get("/account/delete", follow_redirects=False)
    assert refused.status_code == 303
    assert refused.headers["location"] == "/reauth?next=%2Faccount%2Fdelete"


SENSITIVE_API = [
    ("post", "/api/v1/account/password", {"new_password": "another long passphrase"}),
    ("delete", "/api/v1/account", None),
    ("post", "/api/v1/mfa/recovery-codes", None),
    ("post", "/api/v1/mfa/totp/enroll", None),
]


@pytest.mark.parametrize(("method", "path", "body"), SENSITIVE_API)
def test_stale_session_cannot_make_a_sensitive_change_through_the_api(
    client: TestClient, runtime: Runtime, method: str, path: str, body: dict[str, str] | None
) -> None:
    pat = patient(runtime)
    token = factories.session(runtime, pat.account_id, level=2, stepped_up=True)
    age_step_up(runtime, pat.account_id, minutes=6)
    kwargs = {"json": body} if body is not None else {}
    refused = client.request(method.upper(), path, headers=bearer(token), **kwargs)
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["step_up"] == "reauth"
    assert client.get("/api/v1/sessions", headers=bearer(token)).status_code == 200  # untouched


SENSITIVE_PAGES = [
    ("/account/password", "/account/password"),
    ("/account/delete", "/account/delete"),
]


@pytest.mark.parametrize(("page", "back_to"), SENSITIVE_PAGES)
def test_stale_session_is_sent_to_confirm_with_the_second_factor(
    client: TestClient, runtime: Runtime, page: str, back_to: str
) -> None:
    pat = patient(runtime)
    factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    age_step_up(runtime, pat.account_id, minutes=6)
    refused = client.get(page, follow_redirects=False)
    assert refused.status_code == 303
    assert refused.headers["location"] == f"/reauth?next={back_to.replace('/', '%2F')}"
    step_up(client, next_code(pat.app))
    assert client.get(page).status_code == 200


def test_unlinking_a_sign_in_method_needs_a_step_up(client: TestClient, runtime: Runtime) -> None:
    pat = patient(runtime)  # a password too: the link is not the last way to sign in
    link_id = new_id("upi")
    with runtime.sessions.begin() as db:
        db.add(
            UpstreamIdentity(
                id=link_id,
                account_id=pat.account_id,
                provider="social",
                issuer="https://social.example",
                subject="pat",
                linked_at=utcnow(),
            )
        )
    token = factories.session(runtime, pat.account_id, level=2)
    refused = client.delete(f"/api/v1/account/methods/{link_id}", headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json()["step_up"] == "reauth"
    assert ("identity.upstream.unlink", "denied") in _audit(runtime)
    with runtime.sessions() as db:
        assert db.get(UpstreamIdentity, link_id) is not None


def test_account_without_a_second_factor_is_sent_to_set_one_up_first(
    optional_mfa: tuple[TestClient, Runtime],
) -> None:
    client, runtime = optional_mfa
    pat = patient(runtime)
    with runtime.sessions.begin() as db:
        totp.remove(db, pat.account_id)
    token = factories.sign_in(client, runtime, pat.account_id)
    refused = client.get("/account/delete", follow_redirects=False)
    assert refused.headers["location"] == "/mfa/enroll?next=%2Faccount%2Fdelete"
    api = client.delete("/api/v1/account", headers=bearer(token))
    assert api.status_code == 403
    assert api.json()["step_up"] == "enrol"
    # The password reauthenticates (for an app's prompt=login) but never steps up.
    page = client.get("/reauth?next=/account/delete")
    assert 'href="/mfa/enroll?next=/account/delete"' in page.text
    typed = post_form(client, "/reauth", "/reauth", {"method": "password", "password": PASSWORD})
    assert typed.status_code == 303
    assert client.get("/account/delete", follow_redirects=False).status_code == 303
    # Setting up an authenticator proves it: the step-up is done.
    enrolment = client.post("/api/v1/mfa/totp/enroll", headers=bearer(token))
    assert enrolment.status_code == 401  # the password reauthentication renewed the token
    enrol_page = client.get("/mfa/enroll?next=/account/delete")
    assert enrol_page.status_code == 200
    secret = enrol_page.text.split('id="secret">')[1].split("<")[0].replace(" ", "")
    confirmed = client.post(
        "/mfa/enroll",
        data={
            "csrf_token": factories.csrf(enrol_page.text),
            "code": pyotp.TOTP(secret).now(),
            "next": "/account/delete",
        },
        follow_redirects=False,
    )
    assert confirmed.status_code == 303
    assert client.get("/account/delete").status_code == 200
