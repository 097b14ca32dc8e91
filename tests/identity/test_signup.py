"""Sign-up: pages and API, the password policy, logins stored hashed and encrypted, the
same answer for a taken login (no sign-in, no password check), CSRF, oversize input,
escaping, audit. The code and link themselves: test_email_verification.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.audit import AuditRecord
from carebridge.keyring import associated_data
from carebridge.outbox import OutboxMessage
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity import accounts, throttle
from identity.models import Account, AuthSession, LoginIdentifier, PasswordCredential
from tests.identity.verification_mail import code_in, last_email_to, signed_up

FAST = {"argon2_memory_kib": 8192, "argon2_time_cost": 1}
LOGIN = "jane@example.org"
PASSWORD = "quiet harbour lamp"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, **FAST)


def api_signup(client: TestClient, login: str = LOGIN, pw: str = PASSWORD) -> Any:
    return client.post("/api/v1/signup", json={"login": login, "password": pw})


def page_signup(client: TestClient, **fields: str) -> Any:
    page = client.get("/signup")
    match = CSRF.search(page.text)
    assert match
    data = {"csrf_token": match[1], "login": LOGIN, "password": PASSWORD, **fields}
    return client.post("/signup", data=data, follow_redirects=False)


def count(runtime: Runtime, model: Any) -> int:
    with runtime.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


def audit_actions(runtime: Runtime) -> list[tuple[str, str]]:
    with runtime.sessions() as db:
        rows = db.execute(
            select(AuditRecord.action, AuditRecord.outcome).order_by(AuditRecord.seq)
        ).all()
    return [(a, o) for a, o in rows]


# Creating an account


def test_signup_page_creates_the_account_unverified_and_sends_the_code(
    client: TestClient, runtime: Runtime
) -> None:
    response = page_signup(client, login="  Jane@EXAMPLE.org ")
    assert response.status_code == 303
    assert response.headers["location"] == "/email/verify"  # "check your email"
    assert client.cookies.get("carebridge_session") is None  # nothing usable yet
    assert client.cookies.get("carebridge_email_pending")
    with runtime.sessions() as db:
        found = accounts.find_by_login(db, runtime.keyring, LOGIN)
        assert found is not None and not found.verified
        assert accounts.login_of(db, runtime.keyring, found.account_id) == LOGIN
        account = db.get(Account, found.account_id)
        assert account is not None and account.status == "active"
    assert count(runtime, AuthSession) == 0
    assert last_email_to(runtime, LOGIN)["subject"] == "Confirm your email address"
    assert audit_actions(runtime) == [("identity.signup", "allowed")]


def test_signup_api_answers_202_with_a_pending_token_and_no_session(
    client: TestClient, runtime: Runtime
) -> None:
    response = api_signup(client)
    assert response.status_code == 202
    assert response.json()["next_step"] == "verify_email"
    assert response.headers["cache-control"] == "no-store"
    assert count(runtime, AuthSession) == 0
    # The pending token is no session token.
    pending = response.json()["pending_token"]
    bearer = {"Authorization": f"Bearer {pending}"}
    assert client.get("/api/v1/sessions", headers=bearer).status_code == 401


def test_signup_without_mfa_required_is_done_and_goes_to_next(
    tmp_path: Path, database_url: str
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, mfa_required=False, **FAST
    )
    runtime = Runtime.build(settings)
    with TestClient(create_app(runtime)) as client:
        answer = page_signup(client, next="/threads/3")
        assert answer.headers["location"] == "/email/verify?next=%2Fthreads%2F3"
        page = client.get(answer.headers["location"])
        code = code_in(last_email_to(runtime, LOGIN))
        typed = client.post(
            "/email/verify",
            data={"csrf_token": CSRF.findall(page.text)[0], "code": code, "next": "/threads/3"},
            follow_redirects=False,
        )
        assert typed.headers["location"] == "/threads/3"
        other = api_signup(client, login="sam@example.org")
        verified = client.post(
            "/api/v1/email/verify",
            json={
                "pending_token": other.json()["pending_token"],
                "code": code_in(last_email_to(runtime, "sam@example.org")),
            },
        )
        assert verified.json()["next_step"] == "done"
    runtime.close()


def test_login_is_stored_only_as_a_keyed_hash_and_bound_ciphertext(
    client: TestClient, runtime: Runtime
) -> None:
    api_signup(client)
    code = code_in(last_email_to(runtime, LOGIN))
    with runtime.sessions() as db:
        row = db.scalars(select(LoginIdentifier)).one()
        dump = " ".join(
            str(value)
            for table in (
                "account",
                "login_identifier",
                "password_credential",
                "auth_session",
                "email_verification",
            )
            for value in db.execute(text(f"SELECT * FROM {table}")).all()  # noqa: S608
        )
    assert "jane" not in dump.lower() and PASSWORD not in dump
    assert code not in dump and code.replace("-", "") not in dump  # the code only hashed
    assert row.lookup_hash == runtime.keyring.lookup_hash("login", LOGIN)
    plain = runtime.keyring.decrypt(row.encrypted, associated_data("login", row.account_id))
    assert plain == LOGIN.encode()
    with pytest.raises(Exception, match="does not open"):
        runtime.keyring.decrypt(row.encrypted, associated_data("login", "acc_other"))


def test_signup_asks_for_nothing_but_email_and_password(client: TestClient) -> None:
    page = client.get("/signup").text
    names = set(re.findall(r'<input[^>]* name="([^"]+)"', page))
    assert names == {"csrf_token", "next", "login", "password"}
    assert "We will send a code to your email address" in page


# A login that is taken


def test_signup_with_a_taken_login_answers_like_a_new_one_and_changes_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    signed_up(client, LOGIN, PASSWORD)
    with runtime.sessions() as db:
        (stored,) = db.scalars(select(PasswordCredential.hash)).all()
    new = api_signup(client, login="sam@example.org")
    taken = api_signup(client, login="JANE@example.org", pw="another long passphrase")
    assert taken.status_code == new.status_code == 202
    assert set(taken.json()) == set(new.json())
    assert count(runtime, Account) == 2
    with runtime.sessions() as db:
        assert stored in db.scalars(select(PasswordCredential.hash)).all()
    limit = throttle.login_limit(accounts.login_hash(runtime.keyring, LOGIN))
    with runtime.sessions() as db:
        state = throttle.DatabaseStore().state(db, limit, datetime.now(UTC))
    assert state.failures == 0  # not a password guess: nothing was checked
    assert audit_actions(runtime)[-1] == ("identity.signup.existing", "allowed")
    assert last_email_to(runtime, LOGIN)["subject"] == (
        "Someone tried to create an account with your address"
    )


def test_signup_cannot_be_used_to_guess_a_password(client: TestClient) -> None:
    signed_up(client, LOGIN, PASSWORD)
    statuses = [api_signup(client, pw=f"guess number {i} here").status_code for i in range(6)]
    assert statuses == [202] * 6  # the same answer as for a new address, whatever the password
    # ... and the owner is neither locked out nor signed in by any of them.
    signin = client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD})
    assert signin.status_code == 200


def test_signup_racing_another_for_the_same_login_answers_like_a_taken_one(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed_up(client, LOGIN, PASSWORD)
    original = accounts.find_by_login
    calls = []

    def missed_it_the_first_time(*args: Any) -> Any:
        calls.append(args)
        return None if len(calls) == 1 else original(*args)

    monkeypatch.setattr(accounts, "find_by_login", missed_it_the_first_time)
    raced = api_signup(client, pw="another long passphrase")
    assert raced.status_code == 202
    assert count(runtime, Account) == 1
    assert audit_actions(runtime)[-1] == ("identity.signup.existing", "allowed")


def test_signups_per_address_are_budgeted(client: TestClient, runtime: Runtime) -> None:
    limit = throttle.address_limit(runtime.keyring, "testclient", throttle.SIGNUP_ADDRESS)
    store = throttle.DatabaseStore()
    with runtime.sessions.begin() as db:
        for _ in range(20):
            store.attempt(db, [limit], datetime.now(UTC))
    assert api_signup(client, login="twenty-first@example.org").status_code == 202
    assert api_signup(client, login="twenty-second@example.org").status_code == 429
    assert count(runtime, Account) == 1


# Refusals change nothing


@pytest.mark.parametrize(
    ("pw", "message"),
    [
        ("Password1234", "too common"),
        ("carebridge", "too common"),
        ("short", "at least 8 characters"),
        ("jane@example.org is me", "must not contain your email address"),
        ("x" * 1025, "at most 1024 characters"),
    ],
)
def test_refused_passwords_get_a_clear_message_and_create_nothing(
    client: TestClient, runtime: Runtime, pw: str, message: str
) -> None:
    page = page_signup(client, password=pw)
    assert page.status_code == 400
    assert message in page.text
    assert 'aria-invalid="true"' in page.text and 'href="#password"' in page.text
    api = api_signup(client, pw=pw)
    assert api.status_code == 400
    assert api.json()["errors"][0]["field"] == "password"
    assert message in api.json()["errors"][0]["message"]
    assert count(runtime, Account) == 0
    assert count(runtime, AuditRecord) == 0


@pytest.mark.parametrize(
    "login",
    ["", "no-at-sign", "two words@example.org", "a@b", "@example.org", "x" * 250 + "@ex.org"],
)
def test_malformed_or_oversize_logins_are_refused_and_create_nothing(
    client: TestClient, runtime: Runtime, login: str
) -> None:
    response = api_signup(client, login=login)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "login"
    assert page_signup(client, login=login).status_code == 400
    assert count(runtime, Account) == 0


@pytest.mark.parametrize(
    "login",
    ["owner@example.org,attacker@example.net", "Owner <owner@example.org>"],
)
def test_signup_address_smuggling_a_second_recipient_is_refused_and_sends_nothing(
    client: TestClient, runtime: Runtime, login: str
) -> None:
    # What the sign-up form accepts is what the e-mail goes to: exactly one address.
    response = api_signup(client, login=login)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "login"
    assert count(runtime, Account) == 0
    assert count(runtime, OutboxMessage) == 0


def test_oversize_body_is_refused(client: TestClient, runtime: Runtime) -> None:
    response = client.post(
        "/api/v1/signup",
        content=b'{"login": "jane@example.org", "password": "' + b"x" * 70_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert count(runtime, Account) == 0


def test_missing_or_forged_csrf_token_is_refused_and_creates_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    client.get("/signup")
    missing = client.post("/signup", data={"login": LOGIN, "password": PASSWORD})
    forged = client.post(
        "/signup", data={"csrf_token": "f" * 64, "login": LOGIN, "password": PASSWORD}
    )
    assert missing.status_code == forged.status_code == 403
    # A token from another browser's cookie does not fit this one.
    with TestClient(client.app) as other:
        match = CSRF.search(other.get("/signup").text)
        assert match
    stolen = client.post(
        "/signup", data={"csrf_token": match[1], "login": LOGIN, "password": PASSWORD}
    )
    assert stolen.status_code == 403
    assert count(runtime, Account) == 0
    assert client.cookies.get("carebridge_session") is None


def test_a_login_holding_a_script_is_escaped_when_the_form_is_shown_again(
    client: TestClient,
) -> None:
    script = "<script>alert(1)</script>"
    response = page_signup(client, login=f"{script}@example.org", password="short")
    assert response.status_code == 400
    assert script not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;@example.org" in response.text


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example", "/\\evil.example"])
def test_open_redirect_attempts_after_signup_go_to_the_default(
    client: TestClient, target: str
) -> None:
    response = page_signup(client, next=target)
    assert response.headers["location"] == "/email/verify"  # no next carried along


def test_openapi_describes_the_account_endpoints(client: TestClient) -> None:
    document = client.get("/api/openapi.json").json()
    for path in ("/api/v1/signup", "/api/v1/signin", "/api/v1/signout"):
        assert "post" in document["paths"][path]
    signin = document["paths"]["/api/v1/signin"]["post"]
    assert signin["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Credentials"
    }
    # 413 and 415 too: the body is read bounded, and as application/json only.
    assert set(signin["responses"]) == {"200", "202", "400", "401", "413", "415", "429"}
    signup = document["paths"]["/api/v1/signup"]["post"]
    assert set(signup["responses"]) == {"202", "400", "413", "415", "429"}
    for path in ("/api/v1/email/verify", "/api/v1/email/confirm", "/api/v1/account/email"):
        assert "post" in document["paths"][path]
    schemas = document["components"]["schemas"]
    assert set(schemas["SessionStarted"]["properties"]) == {"session_token", "next_step"}
    assert set(schemas["Credentials"]["properties"]) == {"login", "password"}
    assert set(schemas["VerificationPending"]["properties"]) == {"pending_token", "next_step"}
