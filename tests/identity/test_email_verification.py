"""E-mail verification: sign-up that does not tell whether an address is taken, the code in
the same browser, the link anywhere, the attacks on both, accounts from before, and
accounts that sign in only through a provider adding an address."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pyotp
import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity import accounts, email_verification, throttle
from identity.credentials import password
from identity.models import (
    Account,
    AuthSession,
    EmailVerification,
    LoginIdentifier,
    PasswordCredential,
    ThrottleCounter,
)

from . import factories
from .oidc import helpers
from .verification_mail import code_in, emails_to, last_email_to, link_token_in

FAST = {"argon2_memory_kib": 8192, "argon2_time_cost": 1}
LOGIN = "jane@example.org"
PASSWORD = "quiet harbour lamp"
AUTHORIZE = "/authorize?client_id=app&response_type=code&state=s1"
SECRET = re.compile(r'<code class="secret" id="secret">([A-Z2-7 ]+)</code>')


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, **FAST)


def page_signup(client: TestClient, login: str = LOGIN, next_to: str = "") -> Any:
    page = client.get("/signup" + (f"?next={quote(next_to)}" if next_to else ""))
    data = {"csrf_token": factories.csrf(page.text), "login": login, "password": PASSWORD}
    if next_to:
        data["next"] = next_to
    return client.post("/signup", data=data, follow_redirects=False)


def type_code(client: TestClient, code: str, next_to: str = "") -> Any:
    page = client.get("/email/verify")
    data = {"csrf_token": factories.csrf(page.text), "code": code}
    if next_to:
        data["next"] = next_to
    return client.post("/email/verify", data=data, follow_redirects=False)


def open_link(client: TestClient, token: str) -> Any:
    page = client.get(f"/email/confirm?token={token}")
    assert page.status_code == 200
    data = {"csrf_token": factories.csrf(page.text), "token": token}
    return client.post("/email/confirm", data=data)


def api_signup(client: TestClient, login: str = LOGIN) -> Any:
    return client.post("/api/v1/signup", json={"login": login, "password": PASSWORD})


def api_code(client: TestClient, pending: str, code: str) -> Any:
    return client.post("/api/v1/email/verify", json={"pending_token": pending, "code": code})


def verified_at(runtime: Runtime, login: str = LOGIN) -> datetime | None:
    with runtime.sessions() as db:
        return db.scalar(
            select(LoginIdentifier.verified_at).where(
                LoginIdentifier.lookup_hash == accounts.login_hash(runtime.keyring, login)
            )
        )


def count(runtime: Runtime, model: Any) -> int:
    with runtime.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


def session_cookie(client: TestClient) -> str | None:
    return client.cookies.get("carebridge_session")


def existing_account(runtime: Runtime, login: str = LOGIN, *, verified: bool = True) -> str:
    hashed = password.hash_password(runtime.settings, PASSWORD)
    with transaction(runtime.sessions) as db:
        return accounts.create(
            db,
            runtime.keyring,
            login=login,
            password_hash=hashed,
            verified_at=datetime.now(UTC) if verified else None,
        )


# The journey


def test_signup_then_code_signs_in_then_enrolment_then_authorize_resumes(
    client: TestClient, runtime: Runtime
) -> None:
    answer = page_signup(client, next_to=AUTHORIZE)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/email/verify?next={quote(AUTHORIZE, safe='')}"
    assert session_cookie(client) is None  # not usable before the code comes back
    assert verified_at(runtime) is None
    email = last_email_to(runtime, LOGIN)
    assert email["subject"] == "Confirm your email address"
    signed_in = type_code(client, code_in(email).lower().replace("-", " "), next_to=AUTHORIZE)
    assert signed_in.status_code == 303, signed_in.text
    # MFA is required: enrolment first, then the pending /authorize request.
    assert signed_in.headers["location"] == f"/mfa/enroll?next={quote(AUTHORIZE, safe='')}"
    assert session_cookie(client)
    assert verified_at(runtime) is not None
    assert client.cookies.get("carebridge_email_pending") is None


def test_a_pending_authorize_request_survives_signup_code_and_enrolment(
    client: TestClient, runtime: Runtime
) -> None:
    registered = helpers.register(runtime)
    params = helpers.authorization_params(registered, helpers.pkce()[1])
    start = client.get("/authorize", params=params, follow_redirects=False)
    assert start.status_code == 303
    resume = parse_qs(urlsplit(start.headers["location"]).query)["next"][0]
    assert resume.startswith("/authorize?")
    page_signup(client, next_to=resume)
    typed = type_code(client, code_in(last_email_to(runtime, LOGIN)), next_to=resume)
    assert typed.headers["location"] == f"/mfa/enroll?next={quote(resume, safe='')}"
    enrol = client.get(typed.headers["location"])
    secret = SECRET.search(enrol.text)
    assert secret
    app = pyotp.TOTP(secret.group(1).replace(" ", ""))
    confirmed = client.post(
        "/mfa/enroll",
        data={"csrf_token": factories.csrf(enrol.text), "code": app.now(), "next": resume},
        follow_redirects=False,
    )
    codes = client.get(confirmed.headers["location"])
    saved = client.post(
        "/mfa/recovery-codes",
        data={"csrf_token": factories.csrf(codes.text), "next": resume},
        follow_redirects=False,
    )
    assert saved.headers["location"] == resume  # back to the authorization request
    answer = helpers.approve(client, params)
    assert answer["state"] == [params["state"]] and answer["code"]


def test_api_signup_answers_202_and_the_code_starts_a_session(client: TestClient) -> None:
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    started = api_signup(client)
    assert started.status_code == 202
    assert started.json()["next_step"] == "verify_email"
    verified = api_code(
        client, started.json()["pending_token"], code_in(last_email_to(runtime, LOGIN))
    )
    assert verified.status_code == 200
    assert verified.json()["next_step"] == "enroll"
    token = verified.json()["session_token"]
    assert (
        client.post(
            "/api/v1/mfa/totp/enroll", headers={"Authorization": f"Bearer {token}"}
        ).status_code
        == 200
    )


def test_the_pending_state_grants_nothing_but_typing_the_code(
    client: TestClient, runtime: Runtime
) -> None:
    page_signup(client)
    assert client.get("/account", follow_redirects=False).headers["location"].startswith("/signin")
    assert client.get("/mfa/enroll", follow_redirects=False).status_code == 303


def test_link_opened_elsewhere_verifies_the_address_and_signs_nobody_in(
    client: TestClient, runtime: Runtime
) -> None:
    page_signup(client)
    token = link_token_in(last_email_to(runtime, LOGIN))
    with TestClient(client.app) as elsewhere:
        confirmed = open_link(elsewhere, token)
        assert confirmed.status_code == 200
        assert "Your email address is confirmed." in confirmed.text
        assert session_cookie(elsewhere) is None
    assert verified_at(runtime) is not None
    assert count(runtime, AuthSession) == 0
    # Then the password signs in like any verified account's.
    signin = client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD})
    assert signin.status_code == 200 and signin.json()["next_step"] == "enroll"


def test_link_token_used_while_signed_in_as_another_account_does_not_touch_it(
    client: TestClient, runtime: Runtime
) -> None:
    other = existing_account(runtime, "other@example.org")
    with runtime.sessions() as db:
        other_verified = db.get(LoginIdentifier, other).verified_at  # type: ignore[union-attr]
    api_signup(client)  # Jane's sign-up
    token = link_token_in(last_email_to(runtime, LOGIN))
    mine = factories.sign_in(client, runtime, other, level=2)
    confirmed = open_link(client, token)
    assert confirmed.status_code == 200
    assert session_cookie(client) == mine  # the other account's session stays as it was
    assert client.get("/account").status_code == 200
    with runtime.sessions() as db:
        assert db.get(LoginIdentifier, other).verified_at == other_verified  # type: ignore[union-attr]
        jane = accounts.find_by_login(db, runtime.keyring, LOGIN)
        assert jane is not None and jane.verified
        session = db.get(AuthSession, runtime.keyring.lookup_hash("session", mine))
        assert session is not None and session.account_id == other


# Enumeration


def test_taken_address_gets_the_same_answer_and_status_and_its_owner_a_notice(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = existing_account(runtime)

    def owner_rows() -> list[Any]:
        with runtime.sessions() as db:
            login = db.get(LoginIdentifier, account_id)
            credential = db.get(PasswordCredential, account_id)
            assert login is not None and credential is not None
            return [login.lookup_hash, login.encrypted, login.verified_at, credential.hash]

    before = owner_rows()
    fresh, taken = api_signup(client, "new@example.org"), api_signup(client)
    assert fresh.status_code == taken.status_code == 202
    assert fresh.json().keys() == taken.json().keys()
    assert fresh.headers["content-type"] == taken.headers["content-type"]
    assert len(fresh.json()["pending_token"]) == len(taken.json()["pending_token"])
    fresh_page, taken_page = page_signup(client, "new2@example.org"), page_signup(client)
    assert fresh_page.status_code == taken_page.status_code == 303
    assert fresh_page.headers["location"] == taken_page.headers["location"]
    assert "carebridge_email_pending" in fresh_page.headers["set-cookie"]
    assert "carebridge_email_pending" in taken_page.headers["set-cookie"]
    assert client.get(fresh_page.headers["location"]).text.replace(
        factories.csrf(client.get("/email/verify").text), ""
    ) == client.get(taken_page.headers["location"]).text.replace(
        factories.csrf(client.get("/email/verify").text), ""
    )
    notice = last_email_to(runtime, LOGIN)
    assert notice["subject"] == "Someone tried to create an account with your address"
    assert "/signin" in notice["text"] and "token" not in notice["text"]
    assert owner_rows() == before  # nothing of the owner's changed
    assert count(runtime, Account) == 3
    with runtime.sessions() as db:
        mine = select(func.count()).select_from(EmailVerification)
        assert db.scalar(mine.where(EmailVerification.account_id == account_id)) == 0
    # The owner's password is untouched: it still signs in.
    assert (
        client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD}).status_code
        == 200
    )
    # The pending token of the taken answer opens nothing.
    refused = api_code(client, taken.json()["pending_token"], "ABCD-EFGH")
    assert refused.status_code == 400


def test_new_and_taken_addresses_take_about_the_same_time(
    tmp_path: Path, database_url: str
) -> None:
    # Both paths hash the password. With parameters slow enough to dominate a request,
    # a path skipping the hash would answer in a fraction of the time.
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, argon2_memory_kib=65536
    )
    runtime = Runtime.build(settings)
    with TestClient(create_app(runtime)) as client:
        for n in range(4):
            existing_account(runtime, f"taken{n}@example.org")

        def took(login: str) -> float:
            start = time.perf_counter()
            assert api_signup(client, login).status_code == 202
            return time.perf_counter() - start

        # Interleaved, so a busy machine slows both alike.
        pairs = [(took(f"new{n}@example.org"), took(f"taken{n}@example.org")) for n in range(4)]
        new, taken = min(a for a, _ in pairs), min(b for _, b in pairs)
    runtime.close()
    assert 0.5 < taken / new < 2, (new, taken)


def test_mixed_case_and_unicode_addresses_map_to_one_account(
    client: TestClient, runtime: Runtime
) -> None:
    api_signup(client, "Jane@Example.ORG")
    api_signup(client, "  JANE@example.org")
    api_signup(
        client, "\uff4a\uff41\uff4e\uff45@example.org"
    )  # fullwidth letters: NFKC makes them ASCII
    assert count(runtime, Account) == 1
    sent = emails_to(runtime, LOGIN)
    # An unfinished sign-up is replaced by the next one (one account throughout).
    assert [e["subject"] for e in sent] == ["Confirm your email address"] * 3


def test_email_bomb_of_signups_for_one_address_is_throttled(
    client: TestClient, runtime: Runtime
) -> None:
    answers = [api_signup(client).status_code for _ in range(8)]
    assert answers == [202] * 8  # the same answer throughout
    assert len(emails_to(runtime, LOGIN)) == runtime.settings.emails_per_address_per_hour


def test_signups_per_client_address_are_budgeted(client: TestClient) -> None:
    answers = [api_signup(client, f"p{n}@example.org").status_code for n in range(21)]
    assert answers == [202] * 21
    assert api_signup(client, "p22@example.org").status_code == 429


# Attacks on codes and tokens


def _started(client: TestClient, runtime: Runtime, login: str = LOGIN) -> tuple[str, str, str]:
    started = api_signup(client, login)
    email = last_email_to(runtime, login)
    return started.json()["pending_token"], code_in(email), link_token_in(email)


def test_reused_code_and_reused_link_token_are_refused(
    client: TestClient, runtime: Runtime
) -> None:
    pending, code, token = _started(client, runtime)
    assert api_code(client, pending, code).status_code == 200
    again = api_code(client, pending, code)
    assert again.status_code == 400
    link = client.post("/api/v1/email/confirm", json={"token": token})
    assert link.status_code == 400 and link.json()["detail"] == (
        "This link is not valid: it may have expired or been used already. Sign in to get "
        "a new one."
    )


def test_expired_code_and_token_are_refused_alike(client: TestClient, runtime: Runtime) -> None:
    pending, code, token = _started(client, runtime)
    with transaction(runtime.sessions) as db:
        db.execute(
            update(EmailVerification).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    wrong = api_code(client, pending, "0000-0000")
    expired = api_code(client, pending, code)
    assert expired.status_code == wrong.status_code == 400
    assert {**expired.json(), "request_id": ""} == {**wrong.json(), "request_id": ""}
    assert client.post("/api/v1/email/confirm", json={"token": token}).status_code == 400
    assert verified_at(runtime) is None


def test_truncated_code_and_token_are_refused(client: TestClient, runtime: Runtime) -> None:
    pending, code, token = _started(client, runtime)
    assert api_code(client, pending, code[:-1]).status_code == 400
    assert client.post("/api/v1/email/confirm", json={"token": token[:-1]}).status_code == 400
    assert api_code(client, pending[:-1], code).status_code == 400
    assert verified_at(runtime) is None
    assert api_code(client, pending, code).status_code == 200  # the whole ones still work


def test_foreign_code_from_another_accounts_email_is_refused(
    client: TestClient, runtime: Runtime
) -> None:
    mine, _, _ = _started(client, runtime, "mallory@example.org")
    _, jane_code, _ = _started(client, runtime, LOGIN)
    refused = api_code(client, mine, jane_code)
    assert refused.status_code == 400
    assert verified_at(runtime) is None and verified_at(runtime, "mallory@example.org") is None


def test_a_newer_verification_ends_the_older_one(client: TestClient, runtime: Runtime) -> None:
    existing_account(runtime, verified=False)
    first = client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD})
    old_code = code_in(last_email_to(runtime, LOGIN))
    second = client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD})
    new_code = code_in(last_email_to(runtime, LOGIN))
    assert api_code(client, first.json()["pending_token"], old_code).status_code == 400
    assert api_code(client, second.json()["pending_token"], new_code).status_code == 200


def test_past_the_hourly_emails_the_code_already_sent_works_in_the_browser_that_asked_last(
    client: TestClient, runtime: Runtime
) -> None:
    existing_account(runtime, verified=False)
    pendings = [
        client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD}).json()[
            "pending_token"
        ]
        for _ in range(5)
    ]
    assert len(emails_to(runtime, LOGIN)) == 3  # the hourly limit
    code = code_in(last_email_to(runtime, LOGIN))
    assert api_code(client, pendings[2], code).status_code == 400  # moved on
    assert api_code(client, pendings[-1], code).status_code == 200


def test_wrong_code_flood_voids_the_verification(client: TestClient, runtime: Runtime) -> None:
    pending, code, token = _started(client, runtime)
    for _ in range(5):
        assert api_code(client, pending, "0000-0000").status_code == 400
    assert api_code(client, pending, code).status_code == 400  # void now, right code or not
    assert client.post("/api/v1/email/confirm", json={"token": token}).status_code == 400
    assert verified_at(runtime) is None


def test_code_guessing_across_verifications_is_throttled_per_account(
    client: TestClient, runtime: Runtime
) -> None:
    existing_account(runtime, verified=False)
    answers = []
    for _ in range(3):
        pending = client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD}).json()[
            "pending_token"
        ]
        answers += [api_code(client, pending, "0000-0000").status_code for _ in range(5)]
    assert answers[:10] == [400] * 10
    assert 429 in answers[10:]


# Accounts from before


def test_unverified_account_is_asked_to_verify_at_its_next_signin(
    client: TestClient, runtime: Runtime
) -> None:
    existing_account(runtime, verified=False)
    page = client.get("/signin")
    answer = client.post(
        "/signin",
        data={"csrf_token": factories.csrf(page.text), "login": LOGIN, "password": PASSWORD},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/email/verify"
    assert session_cookie(client) is None
    done = type_code(client, code_in(last_email_to(runtime, LOGIN)))
    assert done.status_code == 303 and done.headers["location"] == "/mfa/enroll"
    assert verified_at(runtime) is not None
    # A wrong password still gets the uniform failure, and sends nothing.
    sent = len(emails_to(runtime, LOGIN))
    wrong = client.post("/api/v1/signin", json={"login": LOGIN, "password": "not the password"})
    assert wrong.status_code == 401 and len(emails_to(runtime, LOGIN)) == sent


# Accounts without an address (upstream sign-in only)


def test_upstream_only_account_adds_and_verifies_an_address(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.sign_in(client, runtime, account_id, level=2)
    page = client.get("/account/email")
    sent = client.post(
        "/account/email",
        data={"csrf_token": factories.csrf(page.text), "login": " New@Example.org"},
        follow_redirects=False,
    )
    assert sent.status_code == 303
    code = code_in(last_email_to(runtime, "new@example.org"))
    page = client.get("/account/email?sent=1")
    wrong = client.post(
        "/account/email/verify", data={"csrf_token": factories.csrf(page.text), "code": "00000000"}
    )
    assert wrong.status_code == 400
    with runtime.sessions() as db:
        assert db.get(LoginIdentifier, account_id) is None  # not before the code
    done = client.post(
        "/account/email/verify",
        data={"csrf_token": factories.csrf(page.text), "code": code},
        follow_redirects=False,
    )
    assert done.status_code == 303
    with runtime.sessions() as db:
        row = db.get(LoginIdentifier, account_id)
        assert row is not None and row.verified_at is not None
        assert accounts.login_of(db, runtime.keyring, account_id) == "new@example.org"


def test_adding_a_taken_address_answers_alike_and_notifies_its_owner(
    client: TestClient, runtime: Runtime
) -> None:
    existing_account(runtime)
    account_id = factories.account(runtime)
    token = factories.session(runtime, account_id, level=2)
    bearer = {"Authorization": f"Bearer {token}"}
    taken = client.post("/api/v1/account/email", json={"login": LOGIN.upper()}, headers=bearer)
    fresh = client.post("/api/v1/account/email", json={"login": "free@example.org"}, headers=bearer)
    assert taken.status_code == fresh.status_code == 202
    assert taken.json() == fresh.json()
    assert last_email_to(runtime, LOGIN)["subject"] == (
        "Someone tried to create an account with your address"
    )
    code = code_in(last_email_to(runtime, "free@example.org"))
    assert (
        client.post("/api/v1/account/email/verify", json={"code": code}, headers=bearer).status_code
        == 200
    )
    with runtime.sessions() as db:
        assert accounts.login_of(db, runtime.keyring, account_id) == "free@example.org"


def test_adding_an_address_needs_a_recent_sign_in(client: TestClient, runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    token = factories.sign_in(client, runtime, account_id, level=2)
    with transaction(runtime.sessions) as db:
        db.execute(
            update(AuthSession).values(authenticated_at=datetime.now(UTC) - timedelta(hours=1))
        )
    page = client.get("/account/email")
    stale = client.post(
        "/account/email",
        data={"csrf_token": factories.csrf(page.text), "login": "new@example.org"},
        follow_redirects=False,
    )
    assert stale.status_code == 303 and stale.headers["location"].startswith("/reauth")
    bearer = {"Authorization": f"Bearer {token}"}
    api = client.post("/api/v1/account/email", json={"login": "new@example.org"}, headers=bearer)
    assert api.status_code == 403
    assert emails_to(runtime, "new@example.org") == []


def test_quiet_email_counters_are_purged_whatever_they_count(runtime: Runtime) -> None:
    old = datetime.now(UTC) - timedelta(days=40)
    keys = [
        email_verification.email_limit("bombed").key,
        email_verification.account_limit("acc_x").key,
    ]
    with transaction(runtime.sessions) as db:
        for key in keys:
            db.add(ThrottleCounter(key=key, failures=150, locked_until=None, updated_at=old))
    with transaction(runtime.sessions) as db:
        throttle.DatabaseStore().purge(db, datetime.now(UTC))
    assert count(runtime, ThrottleCounter) == 0


def test_opening_the_link_without_pressing_the_button_verifies_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    # Mail scanners fetch links: the GET only shows the button.
    page_signup(client)
    token = link_token_in(last_email_to(runtime, LOGIN))
    assert client.get(f"/email/confirm?token={token}").status_code == 200
    assert verified_at(runtime) is None
    assert open_link(client, token).status_code == 200
    assert verified_at(runtime) is not None


def test_the_new_forms_without_csrf_token_are_refused_and_change_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    page_signup(client)
    email = last_email_to(runtime, LOGIN)
    client.get("/email/verify")
    code = client.post("/email/verify", data={"code": code_in(email)})
    link = client.post("/email/confirm", data={"token": link_token_in(email)})
    factories.sign_in(client, runtime, factories.account(runtime), level=2)
    add = client.post("/account/email", data={"login": "new@example.org"})
    assert code.status_code == link.status_code == add.status_code == 403
    assert verified_at(runtime) is None
    assert emails_to(runtime, "new@example.org") == []


# Sign-up's password is not usable before the address is verified


def test_signup_then_signin_with_the_chosen_password_does_not_tell_a_taken_address(
    client: TestClient, runtime: Runtime
) -> None:
    existing_account(runtime, "taken@example.org")
    chosen = {"password": "an attacker's own words"}
    for login in ("taken@example.org", "new@example.org"):
        assert client.post("/api/v1/signup", json={"login": login, **chosen}).status_code == 202
    answers = [
        client.post("/api/v1/signin", json={"login": login, **chosen})
        for login in ("taken@example.org", "new@example.org")
    ]
    assert [a.status_code for a in answers] == [401, 401]
    bodies = [{k: v for k, v in a.json().items() if k != "request_id"} for a in answers]
    assert bodies[0] == bodies[1]


def test_a_strangers_unverified_signup_does_not_keep_the_owner_from_the_address(
    client: TestClient, runtime: Runtime
) -> None:
    stranger = {"login": LOGIN, "password": "an attacker's own words"}
    assert client.post("/api/v1/signup", json=stranger).status_code == 202
    pending = api_signup(client).json()["pending_token"]  # the owner, with PASSWORD
    assert api_code(client, pending, code_in(last_email_to(runtime, LOGIN))).status_code == 200
    owner = {"login": LOGIN, "password": PASSWORD}
    assert client.post("/api/v1/signin", json=owner).status_code == 200
    assert client.post("/api/v1/signin", json=stranger).status_code == 401
    assert count(runtime, Account) == 1


def test_the_link_alone_finishes_signup_and_the_password_then_signs_in(
    client: TestClient, runtime: Runtime
) -> None:
    assert api_signup(client).status_code == 202
    token = link_token_in(last_email_to(runtime, LOGIN))
    assert client.post("/api/v1/email/confirm", json={"token": token}).status_code == 200
    answer = client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD})
    assert answer.status_code == 200 and "session_token" in answer.json()


def test_stolen_session_without_a_fresh_second_factor_cannot_add_an_address(
    client: TestClient, runtime: Runtime
) -> None:
    # An upstream-only account with an authenticator: a session whose sign-in is recent
    # (an upstream re-authentication renews it) but whose second factor is not. The
    # added address would become the account's recovery and reset channel.
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    token = factories.sign_in(client, runtime, account_id, level=2)
    page = client.get("/account/email")
    refused = client.post(
        "/account/email",
        data={"csrf_token": factories.csrf(page.text), "login": "thief@example.org"},
        follow_redirects=False,
    )
    assert refused.status_code == 303 and refused.headers["location"].startswith("/reauth")
    bearer = {"Authorization": f"Bearer {token}"}
    api = client.post("/api/v1/account/email", json={"login": "thief@example.org"}, headers=bearer)
    assert api.status_code == 403 and api.json()["step_up"] == "reauth"
    assert emails_to(runtime, "thief@example.org") == []
    # With the authenticator proved just now, it may.
    reauth = client.post("/api/v1/reauth", json={"code": app.now()}, headers=bearer)
    assert reauth.status_code == 200, reauth.text
    bearer = {"Authorization": f"Bearer {reauth.json()['session_token']}"}
    added = client.post("/api/v1/account/email", json={"login": "new@example.org"}, headers=bearer)
    assert added.status_code == 202


def test_signing_in_with_a_code_asked_for_before_the_password_changed_is_refused(
    client: TestClient, runtime: Runtime
) -> None:
    # Whoever knew the old password got as far as the code; the password then changes
    # (the owner's reset or change: both end every session the old one gave). The code
    # would start a session recorded as a password sign-in (enough to start recovering
    # a lost second factor) for a password that no longer works.
    account_id = existing_account(runtime, verified=False)
    intruder = client.post("/api/v1/signin", json={"login": LOGIN, "password": PASSWORD})
    assert intruder.status_code == 202, intruder.text
    code = code_in(last_email_to(runtime, LOGIN))
    new_hash = password.hash_password(runtime.settings, "a brand new long passphrase")
    with transaction(runtime.sessions) as db:
        db.execute(
            update(PasswordCredential)
            .where(PasswordCredential.account_id == account_id)
            .values(hash=new_hash, changed_at=datetime.now(UTC) + timedelta(seconds=1))
        )
    assert api_code(client, intruder.json()["pending_token"], code).status_code == 400
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(AuthSession)) == 0
