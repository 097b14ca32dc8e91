"""Password sign-in and sign-out: pages and API, uniform failures, sessions, CSRF,
open redirects, escaping, re-hashing and the audit trail."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.audit import AuditRecord
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity import accounts
from identity.models import Account, AuthSession, PasswordCredential
from tests.identity import factories
from tests.identity.verification_mail import signed_up

FAST = {"argon2_memory_kib": 8192, "argon2_time_cost": 1}
LOGIN = "jane@example.org"
PASSWORD = "quiet harbour lamp"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, **FAST)


def signup(client: TestClient, login: str = LOGIN, pw: str = PASSWORD) -> str:
    """Sign up and confirm the address with the e-mailed code (a verified account)."""
    return signed_up(client, login, pw)


def account_id(runtime: Runtime, login: str = LOGIN) -> str:
    with runtime.sessions() as db:
        found = accounts.find_by_login(db, runtime.keyring, login)
    assert found is not None
    return found.account_id


def csrf_token(client: TestClient, page: str = "/signin") -> str:
    match = CSRF.search(client.get(page).text)
    assert match
    return match[1]


def post_signin(client: TestClient, **fields: str) -> Any:
    data = {"csrf_token": csrf_token(client), "login": LOGIN, "password": PASSWORD, **fields}
    return client.post("/signin", data=data, follow_redirects=False)


def cookie(client: TestClient) -> str | None:
    return client.cookies.get("carebridge_session")


def actions(runtime: Runtime) -> list[tuple[str, str, str | None]]:
    with runtime.sessions() as db:
        rows = db.execute(
            select(AuditRecord.action, AuditRecord.outcome, AuditRecord.actor).order_by(
                AuditRecord.seq
            )
        ).all()
    return [(a, o, actor) for a, o, actor in rows]


# Success


def test_password_signin_starts_a_level_one_session_and_goes_to_enrolment(
    client: TestClient, runtime: Runtime
) -> None:
    signup(client)
    client.cookies.clear()
    response = post_signin(client)
    assert response.status_code == 303
    assert response.headers["location"] == "/mfa/enroll"  # asserted, not followed
    token = cookie(client)
    assert token
    with runtime.sessions() as db:
        session = db.get(AuthSession, runtime.keyring.lookup_hash("session", token))
    assert session is not None
    assert (session.account_id, session.level) == (account_id(runtime), 1)


def test_signin_with_a_confirmed_authenticator_goes_to_the_challenge(
    client: TestClient, runtime: Runtime
) -> None:
    signup(client)
    factories.totp(runtime, account_id(runtime))
    response = post_signin(client, next="/threads/7")
    assert response.headers["location"] == "/mfa/challenge?next=%2Fthreads%2F7"
    api = client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD})
    assert api.json()["next_step"] == "challenge"


def test_signin_without_mfa_required_goes_to_next(tmp_path: Path, database_url: str) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, mfa_required=False, **FAST
    )
    runtime = Runtime.build(settings)
    with TestClient(create_app(runtime)) as client:
        signup(client)
        assert post_signin(client, next="/threads/7").headers["location"] == "/threads/7"
        assert post_signin(client).headers["location"] == "/account"
        api = client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD})
        assert api.json()["next_step"] == "done"
    runtime.close()


def test_api_signin_returns_a_bearer_token_that_is_not_cached(client: TestClient) -> None:
    signup(client)
    response = client.post(
        "/api/v1/signin", json={"login": " JANE@example.ORG ", "password": PASSWORD}
    )
    assert response.status_code == 200
    assert set(response.json()) == {"session_token", "next_step"}
    assert response.json()["next_step"] == "enroll"
    assert response.headers["cache-control"] == "no-store"
    assert "set-cookie" not in response.headers
    token = response.json()["session_token"]
    ended = client.post("/api/v1/signout", headers={"Authorization": f"Bearer {token}"})
    assert ended.status_code == 204


def test_each_signin_gets_a_new_token_and_ends_the_browsers_previous_session(
    client: TestClient, runtime: Runtime
) -> None:
    signup(client)
    post_signin(client)
    first = cookie(client)
    post_signin(client)
    second = cookie(client)
    assert first and second and first != second
    with runtime.sessions() as db:
        assert len(db.scalars(select(AuthSession)).all()) == 2  # the API sign-up's, and this
    stale = client.post("/api/v1/signout", headers={"Authorization": f"Bearer {first}"})
    assert stale.status_code == 401


# Failures look the same whether or not the account exists


def strip_request_id(response: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = response.json()
    body.pop("request_id")
    headers = {
        k: v for k, v in response.headers.items() if k not in ("x-request-id", "content-length")
    }
    return response.status_code, body, headers


def test_unknown_login_and_wrong_password_get_identical_api_answers(client: TestClient) -> None:
    signup(client)
    wrong = client.post("/api/v1/signin", json={"login": LOGIN, "password": "not the one"})
    unknown = client.post(
        "/api/v1/signin", json={"login": "nobody@example.org", "password": "not the one"}
    )
    assert wrong.status_code == 401
    assert strip_request_id(wrong) == strip_request_id(unknown)


def test_unknown_login_and_wrong_password_get_identical_pages(client: TestClient) -> None:
    signup(client)
    client.cookies.clear()
    wrong = post_signin(client, login="jane@example.org", password="not the one")
    unknown = post_signin(client, login="nobody@example.org", password="not the one")
    assert wrong.status_code == unknown.status_code == 401
    normalise = lambda r: r.text.replace("jane@example.org", "X").replace("nobody@example.org", "X")  # noqa: E731
    assert normalise(wrong) == normalise(unknown)
    assert "The email address or password is not right" in wrong.text
    assert cookie(client) is None


def test_disabled_account_fails_like_a_wrong_password(client: TestClient, runtime: Runtime) -> None:
    signup(client)
    with runtime.sessions.begin() as db:
        db.execute(update(Account).values(status=accounts.DISABLED))
    disabled = client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD})
    unknown = client.post("/api/v1/signin", json={"login": "no@example.org", "password": PASSWORD})
    assert strip_request_id(disabled) == strip_request_id(unknown)


def test_unknown_and_known_logins_take_about_the_same_time(
    tmp_path: Path, database_url: str
) -> None:
    # The dummy hash makes "no such account" cost an Argon2 verify too. With parameters
    # slow enough to dominate a request, skipping it would show as a far faster answer.
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, argon2_memory_kib=65536
    )
    runtime = Runtime.build(settings)
    with TestClient(create_app(runtime)) as client:
        signup(client)

        def took(login: str) -> float:
            start = time.perf_counter()
            response = client.post(
                "/api/v1/signin", json={"login": login, "password": "not the one"}
            )
            assert response.status_code == 401
            return time.perf_counter() - start

        # Interleaved, so a busy machine slows both alike; four: the fifth failure locks.
        pairs = [(took(LOGIN), took("nobody@example.org")) for _ in range(4)]
        known, unknown = min(k for k, _ in pairs), min(u for _, u in pairs)
    runtime.close()
    # Skipping the hash would make it a fraction (the hash is most of a request here).
    assert 0.5 < unknown / known < 2, (known, unknown)


# Input


def test_oversize_fields_get_a_clear_message_and_count_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    response = client.post("/api/v1/signin", json={"login": LOGIN, "password": "x" * 1025})
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "password", "message": "Your password must be at most 1024 characters long."}
    ]
    long_login = "a" * 250 + "@example.org"
    response = client.post("/api/v1/signin", json={"login": long_login, "password": PASSWORD})
    assert response.json()["errors"][0]["field"] == "login"
    assert "at most 254 characters" in response.json()["errors"][0]["message"]
    page = post_signin(client, password="x" * 1025)
    assert page.status_code == 400 and "at most 1024 characters" in page.text
    with runtime.sessions() as db:
        assert db.scalars(select(AuditRecord)).first() is None  # no attempt was made


def test_unknown_json_fields_and_wrong_types_are_refused(client: TestClient) -> None:
    extra = client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD, "x": 1})
    assert extra.status_code == 400
    typed = client.post("/api/v1/signin", json={"login": 7, "password": PASSWORD})
    assert typed.status_code == 400


def test_missing_or_forged_csrf_token_is_refused(client: TestClient, runtime: Runtime) -> None:
    signup(client)
    client.cookies.clear()
    client.get("/signin")
    missing = client.post("/signin", data={"login": LOGIN, "password": PASSWORD})
    forged = client.post(
        "/signin", data={"csrf_token": "0" * 64, "login": LOGIN, "password": PASSWORD}
    )
    cross_site = client.post(
        "/signin",
        data={"csrf_token": csrf_token(client), "login": LOGIN, "password": PASSWORD},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert missing.status_code == forged.status_code == cross_site.status_code == 403
    assert cookie(client) is None
    # None of the refused posts signed in (sign-up's own session came from its e-mail code).
    assert [a for a, _, _ in actions(runtime)].count("identity.signin.password") == 0


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "https://evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "/\t/evil.example",
        "/\r\nLocation: https://evil.example",
        "",
    ],
)
def test_open_redirect_attempts_go_to_the_default(
    tmp_path: Path, database_url: str, target: str
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, mfa_required=False, **FAST
    )
    runtime = Runtime.build(settings)
    with TestClient(create_app(runtime)) as client:
        signup(client)
        page = client.get("/signin", params={"next": target})
        assert "evil" not in page.text
        if set(target) & set("\t\r\n"):
            # Control characters are refused at the input boundary: no redirect at all.
            assert page.status_code == post_signin(client, next=target).status_code == 400
        else:
            assert post_signin(client, next=target).headers["location"] == "/account"
        signup_page = client.get("/signup", params={"next": target})
        assert "evil" not in signup_page.text
    runtime.close()


def test_a_login_holding_a_script_is_escaped_when_the_form_is_shown_again(
    client: TestClient,
) -> None:
    script = "<script>alert(1)</script>"
    bad_shape = post_signin(client, login=script)
    assert bad_shape.status_code == 400
    assert script not in bad_shape.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in bad_shape.text
    valid_shape = post_signin(client, login=f'"{script}"@example.org', password="not it")
    assert valid_shape.status_code == 401
    assert script not in valid_shape.text and "&lt;script&gt;" in valid_shape.text
    evil_next = client.get("/signin", params={"next": '/x"><script>alert(1)</script>'})
    assert script not in evil_next.text


# Re-hashing


def test_password_is_rehashed_at_signin_when_the_parameters_change(
    client: TestClient, runtime: Runtime, settings: Settings
) -> None:
    signup(client)

    def stored() -> str:
        with runtime.sessions() as db:
            return db.scalars(select(PasswordCredential.hash)).one()

    before = stored()
    assert "$m=8192,t=1,p=1$" in before
    stronger = Runtime.build(settings.model_copy(update={"argon2_memory_kib": 9216}))
    with TestClient(create_app(stronger)) as other:
        wrong = other.post("/api/v1/signin", json={"login": LOGIN, "password": "not it"})
        assert wrong.status_code == 401
        assert stored() == before  # never on a failure
        right = other.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD})
        assert right.status_code == 200
    stronger.close()
    after = stored()
    assert "$m=9216,t=1,p=1$" in after and after != before
    # The old parameters still verify the new hash (argon2 reads them from the string).
    assert (
        client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD}).status_code
        == 200
    )


# Sign-out


def test_signout_deletes_the_session_on_the_server_and_clears_the_cookie(
    client: TestClient, runtime: Runtime
) -> None:
    signup(client)
    post_signin(client)
    token = cookie(client)
    assert token
    response = client.post(
        "/signout", data={"csrf_token": csrf_token(client)}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?signed_out=1"
    assert 'carebridge_session=""' in response.headers["set-cookie"]
    assert "Max-Age=0" in response.headers["set-cookie"]
    # The old token no longer works anywhere.
    again = client.post("/api/v1/signout", headers={"Authorization": f"Bearer {token}"})
    assert again.status_code == 401
    assert ("identity.signout", "allowed", f"account:{account_id(runtime)}") in actions(runtime)
    assert "You have signed out" in client.get("/signin?signed_out=1").text


def test_signout_without_csrf_token_is_refused_and_the_session_survives(
    client: TestClient, runtime: Runtime
) -> None:
    signup(client)
    post_signin(client)
    token = cookie(client)
    response = client.post("/signout", data={}, follow_redirects=False)
    assert response.status_code == 403
    with runtime.sessions() as db:
        hashes = set(db.scalars(select(AuthSession.token_hash)))
    assert runtime.keyring.lookup_hash("session", token or "") in hashes


def test_api_signout_takes_a_bearer_token_never_a_cookie(client: TestClient) -> None:
    signup(client)
    post_signin(client)
    assert cookie(client)
    assert client.post("/api/v1/signout").status_code == 401
    assert (
        client.post("/api/v1/signout", headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    assert client.post("/api/v1/signout", headers={"Authorization": "Basic x"}).status_code == 401


# Audit


def test_every_signin_and_failure_is_audited_with_ids_only(
    client: TestClient, runtime: Runtime
) -> None:
    signup(client)
    client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD})
    client.post("/api/v1/signin", json={"login": LOGIN, "password": "not it"})
    client.post("/api/v1/signin", json={"login": "nobody@example.org", "password": "not it"})
    me = f"account:{account_id(runtime)}"
    with runtime.sessions() as db:
        records = db.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all()
    signins = [
        (r.actor, r.outcome, r.target) for r in records if r.action == "identity.signin.password"
    ]
    assert signins[-3:-1] == [(me, "allowed", me), ("anonymous", "failed", me)]
    actor, outcome, target = signins[-1]
    assert (actor, outcome) == ("anonymous", "failed") and target and target.startswith("login:")
    for record in records:
        text = f"{record.actor} {record.target} {record.action}"
        assert "example.org" not in text and PASSWORD not in text
