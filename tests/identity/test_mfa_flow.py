"""The MFA pages and API end to end: enrolment, the second step, recovery codes, re-auth."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import pyotp
import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from carebridge.utc import utcnow
from identity import accounts, authn, sessions, throttle
from identity.credentials import password, recovery, totp
from identity.flows import mfa
from identity.models import AuthSession, RecoveryCode, ThrottleCounter, TotpCredential
from tests.identity import factories
from tests.identity.verification_mail import code_in, last_email_to

COOKIE = "carebridge_session"
_SECRET = re.compile(r'<code class="secret" id="secret">([A-Z2-7 ]+)</code>')
_CODE_ITEM = re.compile(r"<li><code>([0-9A-Z]{5}-[0-9A-Z]{5})</code></li>")


def _next_code(app: pyotp.TOTP) -> str:
    """The next time step's code: inside the window, and never the one just used."""
    return app.at(time.time() + 30)


def _secret_on(html: str) -> str:
    match = _SECRET.search(html)
    assert match, "no secret on the enrolment page"
    return match.group(1).replace(" ", "")


def _post_form(client: TestClient, page: str, action: str, data: dict[str, str]) -> httpx2.Response:
    form_page = client.get(page)
    assert form_page.status_code == 200, form_page.text
    token = factories.csrf(form_page.text)
    return client.post(action, data={"csrf_token": token, **data}, follow_redirects=False)


def _session_row(runtime: Runtime, token: str) -> AuthSession | None:
    with runtime.sessions() as db:
        return db.get(AuthSession, runtime.keyring.lookup_hash("session", token))


def _age(runtime: Runtime, token: str, minutes: int) -> None:
    """Make the session's last proof of identity (and of its second factor) ``minutes``
    old."""
    then = utcnow() - timedelta(minutes=minutes)
    with transaction(runtime.sessions) as db:
        db.execute(
            update(AuthSession)
            .where(AuthSession.token_hash == runtime.keyring.lookup_hash("session", token))
            .values(authenticated_at=then, stepped_up_at=then)
        )


def _audit(runtime: Runtime) -> list[tuple[str, str]]:
    with runtime.sessions() as db:
        rows = db.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all()
        return [(row.action, row.outcome) for row in rows]


def _confirmed(runtime: Runtime, account_id: str) -> bool:
    with runtime.sessions() as db:
        return totp.confirmed(db, account_id) is not None


# Enrolment


def test_new_account_at_level_one_is_sent_to_enrolment(
    client: TestClient, runtime: Runtime
) -> None:
    factories.sign_in(client, runtime, factories.account(runtime))
    response = client.get("/account", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/mfa/enroll?next=%2Faccount"


def test_enrolment_page_shows_a_qr_code_and_the_secret(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.sign_in(client, runtime, account_id)
    page = client.get("/mfa/enroll")
    assert page.status_code == 200
    assert '<img class="qr" src="data:image/svg+xml;base64,' in page.text
    secret = _secret_on(page.text)
    assert len(secret) == 32
    assert f"carebridge ({totp.label(runtime, account_id)})" in page.text
    assert 'autocomplete="one-time-code"' in page.text
    assert "img-src 'self' data:" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    # A reload shows the seed already scanned, not a new one.
    assert _secret_on(client.get("/mfa/enroll").text) == secret


def test_a_seed_being_enrolled_is_shown_only_to_the_session_that_made_it(
    client: TestClient, runtime: Runtime
) -> None:
    # Someone who learnt the password signs in (level 1) while the owner is enrolling: had
    # they seen the owner's seed, the owner's confirming it would hand them the second factor.
    account_id = factories.account(runtime)
    owner = factories.sign_in(client, runtime, account_id)
    owners_seed = _secret_on(client.get("/mfa/enroll").text)
    # A reload keeps it for its own session.
    assert _secret_on(client.get("/mfa/enroll").text) == owners_seed

    intruder = factories.sign_in(client, runtime, account_id)
    intruders_seed = _secret_on(client.get("/mfa/enroll").text)
    assert intruders_seed != owners_seed

    # Nor is the seed the intruder's session made ever the one the owner confirms.
    factories.use_token(client, runtime, owner)
    confirmed_seed = _secret_on(client.get("/mfa/enroll").text)
    assert confirmed_seed not in (owners_seed, intruders_seed)
    page = client.get("/mfa/enroll")
    response = client.post(
        "/mfa/enroll",
        data={"csrf_token": factories.csrf(page.text), "code": pyotp.TOTP(confirmed_seed).now()},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    factories.use_token(client, runtime, intruder)
    assert client.get("/mfa/enroll", follow_redirects=False).status_code == 303  # challenge now


def test_enrolment_requires_a_valid_first_code(client: TestClient, runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    token = factories.sign_in(client, runtime, account_id)
    secret = _secret_on(client.get("/mfa/enroll").text)
    wrong = _wrong_codes(pyotp.TOTP(secret), 1)[0]
    response = _post_form(client, "/mfa/enroll", "/mfa/enroll", {"code": wrong})
    assert response.status_code == 400
    assert "That code didn&#39;t work" in response.text
    assert not _confirmed(runtime, account_id)
    row = _session_row(runtime, token)
    assert row is not None
    assert row.level == 1
    assert ("identity.mfa.totp.confirm", "failed") in _audit(runtime)


def test_confirming_enrolment_gives_a_new_level_two_token_and_shows_codes_once(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    old_token = factories.sign_in(client, runtime, account_id)
    secret = _secret_on(client.get("/mfa/enroll?next=/threads").text)
    response = _post_form(
        client,
        "/mfa/enroll?next=/threads",
        "/mfa/enroll",
        {"code": pyotp.TOTP(secret).now(), "next": "/threads"},
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/mfa/recovery-codes?next=%2Fthreads"
    new_token = client.cookies.get(COOKIE)
    assert new_token and new_token != old_token
    assert _session_row(runtime, old_token) is None
    row = _session_row(runtime, new_token)
    assert row is not None
    assert row.level == sessions.SECOND_FACTOR
    assert _confirmed(runtime, account_id)

    shown = client.get("/mfa/recovery-codes?next=/threads")
    codes = _CODE_ITEM.findall(shown.text)
    assert len(codes) == 10
    assert "I have saved these codes" in shown.text
    again = client.get("/mfa/recovery-codes?next=/threads")
    assert _CODE_ITEM.findall(again.text) == []
    assert "shown once" in again.text
    with runtime.sessions() as db:
        assert recovery.remaining(db, account_id) == 10

    done = client.post(
        "/mfa/recovery-codes",
        data={"csrf_token": factories.csrf(again.text), "next": "/threads"},
        follow_redirects=False,
    )
    assert (done.status_code, done.headers["location"]) == (303, "/threads")
    assert client.get("/account", follow_redirects=False).status_code == 200

    factories.use_token(client, runtime, old_token)  # the pre-MFA token is worthless now
    stale = client.get("/account", follow_redirects=False)
    assert stale.status_code == 303
    assert stale.headers["location"].startswith("/signin")
    assert ("identity.mfa.totp.enroll", "allowed") in _audit(runtime)
    assert ("identity.mfa.totp.confirm", "allowed") in _audit(runtime)


def test_enrolment_without_csrf_token_is_refused_and_changes_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    token = factories.sign_in(client, runtime, account_id)
    secret = _secret_on(client.get("/mfa/enroll").text)
    response = client.post(
        "/mfa/enroll", data={"code": pyotp.TOTP(secret).now()}, follow_redirects=False
    )
    assert response.status_code == 403
    assert not _confirmed(runtime, account_id)
    assert client.cookies.get(COOKIE) == token
    assert _session_row(runtime, token) is not None


def test_enrolled_account_at_level_one_cannot_reach_enrolment(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    factories.sign_in(client, runtime, account_id)
    response = client.get("/mfa/enroll", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/mfa/challenge?")


# The second step


def test_second_step_gives_a_new_token_and_the_old_one_stops_working(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    old_token = factories.sign_in(client, runtime, account_id)
    first = client.get("/account", follow_redirects=False)
    assert first.headers["location"] == "/mfa/challenge?next=%2Faccount"
    response = _post_form(
        client, first.headers["location"], "/mfa/challenge", {"code": app.now(), "next": "/account"}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/account"
    new_token = client.cookies.get(COOKIE)
    assert new_token and new_token != old_token
    assert client.get("/account", follow_redirects=False).status_code == 200
    factories.use_token(client, runtime, old_token)
    assert client.get("/account", follow_redirects=False).headers["location"].startswith("/signin")
    assert ("identity.mfa.challenge.totp", "allowed") in _audit(runtime)


def test_replayed_code_is_refused_at_the_second_step(client: TestClient, runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    code = app.now()
    factories.sign_in(client, runtime, account_id)
    first = _post_form(client, "/mfa/challenge", "/mfa/challenge", {"code": code})
    assert first.status_code == 303

    attacker_token = factories.sign_in(client, runtime, account_id)  # another level-1 session
    replay = _post_form(client, "/mfa/challenge", "/mfa/challenge", {"code": code})
    assert replay.status_code == 400
    assert "That code didn&#39;t work" in replay.text
    row = _session_row(runtime, attacker_token)
    assert row is not None
    assert row.level == 1
    assert ("identity.mfa.challenge.totp", "failed") in _audit(runtime)


@pytest.fixture
def frozen_throttle_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every counted attempt happens at one instant, so a one-second lock is still on."""
    now = throttle.utcnow()
    monkeypatch.setattr(throttle, "utcnow", lambda: now)


def _wrong_codes(app: pyotp.TOTP, how_many: int) -> list[str]:
    valid = {app.at(time.time() + offset) for offset in range(-90, 91, 30)}
    return [f"{n:06d}" for n in range(1000) if f"{n:06d}" not in valid][:how_many]


@pytest.mark.usefixtures("frozen_throttle_clock")
def test_wrong_codes_lock_the_second_step(client: TestClient, runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    token = factories.sign_in(client, runtime, account_id)
    csrf = factories.csrf(client.get("/mfa/challenge").text)
    for code in _wrong_codes(app, mfa.SECOND_STEP.free + 1):
        response = client.post("/mfa/challenge", data={"csrf_token": csrf, "code": code})
        assert response.status_code == 400
    assert ("identity.mfa.lock", "denied") in _audit(runtime)
    locked = client.post(
        "/mfa/challenge", data={"csrf_token": csrf, "code": app.now()}, follow_redirects=False
    )
    assert locked.status_code == 429
    assert "Too many wrong codes" in locked.text
    assert ("identity.mfa.challenge.totp", "denied") in _audit(runtime)
    # The same count covers recovery codes, the API and re-authentication.
    with transaction(runtime.sessions) as db:
        codes = recovery.regenerate(db, runtime, account_id)
    page = client.post("/mfa/recovery", data={"csrf_token": csrf, "code": codes[0]})
    assert page.status_code == 429
    api = client.post("/api/v1/mfa/challenge", json={"code": app.now()}, headers=_bearer(token))
    assert api.status_code == 429
    row = _session_row(runtime, token)
    assert row is not None
    assert row.level == 1
    with transaction(runtime.sessions) as db:
        assert recovery.use(db, runtime, account_id, codes[0])  # never spent while locked


@pytest.mark.usefixtures("frozen_throttle_clock")
def test_hundred_wrong_codes_lock_until_an_operator_clears_it(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    token = factories.session(runtime, account_id)
    store = throttle.store_for(runtime.settings)
    limit = mfa.second_step_limit(account_id)
    with transaction(runtime.sessions) as db:  # 100 failures, as if spread over weeks
        db.add(ThrottleCounter(key=limit.key, failures=100, updated_at=throttle.utcnow()))
    with runtime.sessions() as db:
        state = store.state(db, limit, throttle.utcnow() + timedelta(days=1))
    assert state.hard_locked
    response = client.post(
        "/api/v1/mfa/challenge", json={"code": app.now()}, headers=_bearer(token)
    )
    assert response.status_code == 429
    assert mfa.unlock_second_step(runtime, account_id) == 100
    response = client.post(
        "/api/v1/mfa/challenge", json={"code": app.now()}, headers=_bearer(token)
    )
    assert response.status_code == 200
    assert ("identity.mfa.unlock", "allowed") in _audit(runtime)


def test_a_right_code_clears_the_count(client: TestClient, runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    factories.sign_in(client, runtime, account_id)
    csrf = factories.csrf(client.get("/mfa/challenge").text)
    for code in _wrong_codes(app, mfa.SECOND_STEP.free):
        client.post("/mfa/challenge", data={"csrf_token": csrf, "code": code})
    passed = client.post(
        "/mfa/challenge", data={"csrf_token": csrf, "code": app.now()}, follow_redirects=False
    )
    assert passed.status_code == 303
    with runtime.sessions() as db:
        assert db.get(ThrottleCounter, mfa.second_step_limit(account_id).key) is None


def test_malformed_code_is_a_form_error_and_not_counted(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    factories.sign_in(client, runtime, account_id)
    response = _post_form(client, "/mfa/challenge", "/mfa/challenge", {"code": ""})
    assert response.status_code == 400
    assert "Enter the 6-digit code" in response.text
    assert 'aria-invalid="true"' in response.text
    assert _audit(runtime) == []


def test_recovery_code_passes_the_second_step_once(client: TestClient, runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    with transaction(runtime.sessions) as db:
        code = recovery.regenerate(db, runtime, account_id)[0]
    factories.sign_in(client, runtime, account_id)
    challenge = client.get("/mfa/challenge?next=/account")
    assert 'href="/mfa/recovery?next=/account"' in challenge.text
    used = _post_form(client, "/mfa/recovery", "/mfa/recovery", {"code": code.lower()})
    assert used.status_code == 303
    assert client.get("/account", follow_redirects=False).status_code == 200

    factories.sign_in(client, runtime, account_id)
    again = _post_form(client, "/mfa/recovery", "/mfa/recovery", {"code": code})
    assert again.status_code == 400
    assert "Each code works once" in again.text
    actions = _audit(runtime)
    assert ("identity.mfa.challenge.recovery", "allowed") in actions
    assert ("identity.mfa.challenge.recovery", "failed") in actions


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example", "/\\evil"])
def test_second_step_never_redirects_off_site(
    client: TestClient, runtime: Runtime, target: str
) -> None:
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    factories.sign_in(client, runtime, account_id)
    response = _post_form(
        client, "/mfa/challenge", "/mfa/challenge", {"code": app.now(), "next": target}
    )
    assert response.headers["location"] == "/account"


def test_second_step_page_at_level_two_goes_straight_on(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    factories.sign_in(client, runtime, account_id, level=2)
    response = client.get("/mfa/challenge?next=/account/sessions", follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/account/sessions")


def test_challenge_without_csrf_token_is_refused_and_changes_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    token = factories.sign_in(client, runtime, account_id)
    response = client.post("/mfa/challenge", data={"code": app.now()}, follow_redirects=False)
    assert response.status_code == 403
    row = _session_row(runtime, token)
    assert row is not None
    assert row.level == 1
    with runtime.sessions() as db:
        credential = db.get(TotpCredential, account_id)
        assert credential is not None
        assert credential.last_step is None


# Re-authentication before factor changes


def test_replacing_the_authenticator_needs_a_recent_reauthentication(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    old_app = factories.totp(runtime, account_id)
    token = factories.sign_in(client, runtime, account_id, level=2)
    _age(runtime, token, minutes=10)

    response = client.get("/mfa/enroll?next=/account/security", follow_redirects=False)
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/reauth?")
    back_to = parse_qs(urlsplit(location).query)["next"][0]
    assert back_to == "/mfa/enroll?next=%2Faccount%2Fsecurity"

    wrong = _post_form(client, location, "/reauth", {"code": "12345x", "next": back_to})
    assert wrong.status_code == 400
    done = _post_form(client, location, "/reauth", {"code": old_app.now(), "next": back_to})
    assert done.status_code == 303
    assert done.headers["location"] == back_to
    new_token = client.cookies.get(COOKIE)
    assert new_token and new_token != token
    assert _session_row(runtime, token) is None
    assert ("identity.reauth.totp", "allowed") in _audit(runtime)

    page = client.get(back_to)
    assert "Set up a new authenticator app" in page.text
    new_app = pyotp.TOTP(_secret_on(page.text))
    confirmed = client.post(
        "/mfa/enroll",
        data={"csrf_token": factories.csrf(page.text), "code": new_app.now()},
        follow_redirects=False,
    )
    assert confirmed.status_code == 303
    assert confirmed.headers["location"] == "/account/security"
    with transaction(runtime.sessions) as db:
        assert not totp.verify(db, runtime, account_id, _next_code(old_app))
        assert totp.verify(db, runtime, account_id, _next_code(new_app))


def test_stale_session_cannot_confirm_a_replacement(client: TestClient, runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    token = factories.sign_in(client, runtime, account_id, level=2, stepped_up=True)
    page = client.get("/mfa/enroll")
    new_app = pyotp.TOTP(_secret_on(page.text))
    _age(runtime, token, minutes=10)
    response = client.post(
        "/mfa/enroll",
        data={"csrf_token": factories.csrf(page.text), "code": new_app.now()},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"].startswith("/reauth?")
    with runtime.sessions() as db:
        credential = db.get(TotpCredential, account_id)
        assert credential is not None
        assert credential.pending_encrypted is not None  # still only pending


def test_regenerating_recovery_codes_needs_a_recent_reauthentication(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    with transaction(runtime.sessions) as db:
        old_codes = recovery.regenerate(db, runtime, account_id)
    token = factories.sign_in(client, runtime, account_id, level=2)
    _age(runtime, token, minutes=10)

    refused = _post_form(client, "/account/security", "/account/security/recovery-codes", {})
    assert refused.status_code == 303
    assert refused.headers["location"] == "/reauth?next=%2Faccount%2Fsecurity"
    with runtime.sessions() as db:
        hashes = {row.code_hash for row in db.scalars(select(RecoveryCode))}
    assert hashes == {
        runtime.keyring.lookup_hash("recovery-code", c.replace("-", "")) for c in old_codes
    }

    _post_form(
        client, "/reauth?next=/account/security", "/reauth", {"code": app.now(), "next": "/x"}
    )
    made = _post_form(client, "/account/security", "/account/security/recovery-codes", {})
    assert made.status_code == 303
    assert made.headers["location"] == "/mfa/recovery-codes?next=%2Faccount%2Fsecurity"
    new_codes = _CODE_ITEM.findall(client.get(made.headers["location"]).text)
    assert len(new_codes) == 10
    assert set(new_codes).isdisjoint(old_codes)
    with transaction(runtime.sessions) as db:
        assert not recovery.use(db, runtime, account_id, old_codes[0])
        assert recovery.use(db, runtime, account_id, new_codes[0])
    assert ("identity.mfa.recovery.regenerate", "allowed") in _audit(runtime)


def _password_account(runtime: Runtime, secret: str) -> str:
    hashed = password.hash_password(runtime.settings, secret)
    with transaction(runtime.sessions) as db:
        return accounts.create(db, runtime.keyring, login="pat@example.org", password_hash=hashed)


def test_reauthentication_with_the_password(client: TestClient, runtime: Runtime) -> None:
    # Only for an account without a second factor, and it never steps up
    # (tests/identity/test_step_up.py has the accounts with one).
    account_id = _password_account(runtime, "a long enough passphrase")
    token = factories.sign_in(client, runtime, account_id, level=2)
    _age(runtime, token, minutes=10)
    page = client.get("/reauth?next=/account/security")
    assert 'autocomplete="current-password"' in page.text
    assert 'autocomplete="one-time-code"' not in page.text
    form = {"csrf_token": factories.csrf(page.text), "method": "password"}
    wrong = client.post("/reauth", data={**form, "password": "not it", "next": "/account/security"})
    assert wrong.status_code == 400
    assert "That password is not right" in wrong.text
    assert client.cookies.get(COOKIE) == token
    login_key = throttle.login_limit(accounts.login_hash(runtime.keyring, "pat@example.org")).key
    with runtime.sessions() as db:
        counter = db.get(ThrottleCounter, login_key)
        assert counter is not None  # counted against the login, like a sign-in guess
        assert counter.failures == 1
    done = client.post(
        "/reauth",
        data={**form, "password": "a long enough passphrase", "next": "/account/security"},
        follow_redirects=False,
    )
    assert (done.status_code, done.headers["location"]) == (303, "/account/security")
    fresh = client.cookies.get(COOKIE)
    assert fresh and fresh != token
    row = _session_row(runtime, fresh)
    assert row is not None
    assert row.level == 2
    assert authn.is_recent(row)
    assert not authn.is_stepped_up(row, runtime.settings)
    with runtime.sessions() as db:
        assert db.get(ThrottleCounter, login_key) is None
    actions = _audit(runtime)
    assert ("identity.reauth.password", "failed") in actions
    assert ("identity.reauth.password", "allowed") in actions


def test_api_reauthentication_takes_a_code_or_a_password(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = _password_account(runtime, "a long enough passphrase")
    token = factories.session(runtime, account_id, level=2)
    both = client.post(
        "/api/v1/reauth", json={"code": "123456", "password": "x"}, headers=_bearer(token)
    )
    assert both.status_code == 400
    wrong = client.post("/api/v1/reauth", json={"password": "nope"}, headers=_bearer(token))
    assert wrong.status_code == 400
    assert wrong.json()["errors"][0]["field"] == "password"
    done = client.post(
        "/api/v1/reauth", json={"password": "a long enough passphrase"}, headers=_bearer(token)
    )
    assert done.status_code == 200, done.text
    assert done.json()["level"] == 2
    assert done.json()["stepped_up"] is False  # a password never steps up
    assert client.get("/api/v1/sessions", headers=_bearer(token)).status_code == 401
    # With an authenticator: its code steps up; the password is no longer taken.
    app = factories.totp(runtime, account_id)
    fresh = done.json()["session_token"]
    refused = client.post(
        "/api/v1/reauth", json={"password": "a long enough passphrase"}, headers=_bearer(fresh)
    )
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "password"
    coded = client.post("/api/v1/reauth", json={"code": app.now()}, headers=_bearer(fresh))
    assert coded.status_code == 200, coded.text
    assert coded.json()["stepped_up"] is True


def test_security_page_shows_status_and_remaining_codes(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    with transaction(runtime.sessions) as db:
        code = recovery.regenerate(db, runtime, account_id)[0]
        recovery.use(db, runtime, account_id, code)
    factories.sign_in(client, runtime, account_id, level=2)
    page = client.get("/account/security")
    assert page.status_code == 200
    assert "9 of 10 recovery codes left" in page.text
    assert totp.label(runtime, account_id) in page.text
    assert "Turn off two-step verification" not in page.text  # MFA is required here


def test_turning_off_is_refused_while_mfa_is_required(client: TestClient, runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    factories.sign_in(client, runtime, account_id, level=2)
    response = _post_form(client, "/account/security", "/account/security/totp/remove", {})
    assert response.status_code == 403
    assert _confirmed(runtime, account_id)


@pytest.fixture
def optional_mfa(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, Runtime]]:
    runtime = Runtime.build(
        Settings(data_dir=tmp_path / "data", database_url=database_url, mfa_required=False)
    )
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        yield client, runtime
    runtime.close()


def test_turning_off_where_mfa_is_optional_needs_reauthentication(
    optional_mfa: tuple[TestClient, Runtime],
) -> None:
    client, runtime = optional_mfa
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    token = factories.sign_in(client, runtime, account_id, level=2)
    _age(runtime, token, minutes=10)
    refused = _post_form(client, "/account/security", "/account/security/totp/remove", {})
    assert refused.headers["location"].startswith("/reauth?")
    assert _confirmed(runtime, account_id)
    _post_form(client, "/reauth", "/reauth", {"code": app.now()})
    removed = _post_form(client, "/account/security", "/account/security/totp/remove", {})
    assert removed.headers["location"] == "/account/security?done=removed"
    assert not _confirmed(runtime, account_id)
    assert ("identity.mfa.totp.remove", "allowed") in _audit(runtime)


def test_without_the_mfa_policy_a_level_one_session_is_enough(
    optional_mfa: tuple[TestClient, Runtime],
) -> None:
    client, runtime = optional_mfa
    token = factories.sign_in(client, runtime, factories.account(runtime))
    assert client.get("/account", follow_redirects=False).status_code == 200
    # Adding a first authenticator is a factor change: it needs a recent proof of identity.
    assert client.get("/mfa/enroll").status_code == 200
    _age(runtime, token, minutes=10)
    later = client.get("/mfa/enroll", follow_redirects=False)
    assert later.headers["location"].startswith("/reauth?")


# JSON API


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_api_enrolment_confirmation_and_second_step(client: TestClient, runtime: Runtime) -> None:
    client.cookies.clear()
    account_id = factories.account(runtime)
    token = factories.session(runtime, account_id)
    assert client.post("/api/v1/mfa/totp/enroll").status_code == 401

    enrolled = client.post("/api/v1/mfa/totp/enroll", headers=_bearer(token))
    assert enrolled.status_code == 200
    body = enrolled.json()
    assert body["otpauth_uri"].startswith("otpauth://totp/carebridge:")
    assert body["replacing"] is False
    app = pyotp.TOTP(body["secret"])

    wrong = client.post("/api/v1/mfa/totp/confirm", json={"code": "abcdef"}, headers=_bearer(token))
    assert wrong.status_code == 400
    assert wrong.headers["content-type"] == "application/problem+json"
    assert wrong.json()["errors"] == [{"field": "code", "message": wrong.json()["detail"]}]

    confirmed = client.post(
        "/api/v1/mfa/totp/confirm", json={"code": app.now()}, headers=_bearer(token)
    )
    assert confirmed.status_code == 200, confirmed.text
    level_two = confirmed.json()
    assert level_two["level"] == 2
    assert len(level_two["recovery_codes"]) == 10
    assert client.get("/api/v1/sessions", headers=_bearer(token)).status_code == 401
    assert (
        client.get("/api/v1/sessions", headers=_bearer(level_two["session_token"])).status_code
        == 200
    )

    second = factories.session(runtime, account_id)
    assert client.get("/api/v1/sessions", headers=_bearer(second)).status_code == 401
    passed = client.post(
        "/api/v1/mfa/challenge", json={"code": _next_code(app)}, headers=_bearer(second)
    )
    assert passed.status_code == 200, passed.text
    assert passed.json()["level"] == 2
    third = factories.session(runtime, account_id)
    replay = client.post(
        "/api/v1/mfa/challenge", json={"code": _next_code(app)}, headers=_bearer(third)
    )
    assert replay.status_code == 400
    rescued = client.post(
        "/api/v1/mfa/recovery",
        json={"code": level_two["recovery_codes"][0]},
        headers=_bearer(third),
    )
    assert rescued.status_code == 200, rescued.text
    assert rescued.json()["recovery_codes_remaining"] == 9
    again = client.post(
        "/api/v1/mfa/recovery",
        json={"code": "ABCDE-12345"},
        headers=_bearer(passed.json()["session_token"]),
    )
    assert again.status_code == 409


def test_api_replacement_needs_reauthentication(client: TestClient, runtime: Runtime) -> None:
    client.cookies.clear()
    account_id = factories.account(runtime)
    app = factories.totp(runtime, account_id)
    token = factories.session(runtime, account_id, level=2)
    _age(runtime, token, minutes=10)
    refused = client.post("/api/v1/mfa/totp/enroll", headers=_bearer(token))
    assert refused.status_code == 403
    assert "/api/v1/reauth" in refused.json()["detail"]
    reauth = client.post("/api/v1/reauth", json={"code": app.now()}, headers=_bearer(token))
    assert reauth.status_code == 200, reauth.text
    fresh = reauth.json()["session_token"]
    assert fresh != token
    enrolled = client.post("/api/v1/mfa/totp/enroll", headers=_bearer(fresh))
    assert enrolled.status_code == 200
    assert enrolled.json()["replacing"] is True
    new_app = pyotp.TOTP(enrolled.json()["secret"])
    confirmed = client.post(
        "/api/v1/mfa/totp/confirm", json={"code": new_app.now()}, headers=_bearer(fresh)
    )
    assert confirmed.status_code == 200
    assert confirmed.json()["recovery_codes"] == []  # replacing keeps the existing codes


def test_api_wrong_json_is_a_problem_naming_the_field(client: TestClient, runtime: Runtime) -> None:
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    token = factories.session(runtime, account_id)
    response = client.post("/api/v1/mfa/challenge", json={"kode": "1"}, headers=_bearer(token))
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "code"


def test_openapi_documents_the_mfa_and_session_endpoints(client: TestClient) -> None:
    document = client.get("/api/openapi.json").json()
    paths = document["paths"]
    for path, method in [
        ("/api/v1/mfa/totp/enroll", "post"),
        ("/api/v1/mfa/totp/confirm", "post"),
        ("/api/v1/mfa/challenge", "post"),
        ("/api/v1/mfa/recovery", "post"),
        ("/api/v1/reauth", "post"),
        ("/api/v1/sessions", "get"),
        ("/api/v1/sessions/{handle}", "delete"),
    ]:
        assert method in paths[path], path
    schemas = document["components"]["schemas"]
    for name in ["TotpEnrolment", "TotpConfirmed", "TotpCode", "SessionToken", "SessionList"]:
        assert name in schemas


# With the real sign-up and sign-in pages


def test_sign_up_enrol_sign_out_and_sign_in_with_the_second_step(
    client: TestClient, runtime: Runtime
) -> None:
    page = client.get("/signup")
    signed_up = client.post(
        "/signup",
        data={
            "csrf_token": factories.csrf(page.text),
            "login": "pat@example.org",
            "password": "a long enough passphrase",
        },
        follow_redirects=False,
    )
    assert signed_up.status_code == 303, signed_up.text
    assert signed_up.headers["location"] == "/email/verify"
    code_page = client.get("/email/verify")
    code = code_in(last_email_to(runtime, "pat@example.org"))
    verified = client.post(
        "/email/verify",
        data={"csrf_token": factories.csrf(code_page.text), "code": code},
        follow_redirects=False,
    )
    assert verified.headers["location"] == "/mfa/enroll"
    enrol = client.get("/mfa/enroll")
    assert "pat@example.org" not in enrol.text  # neither on the page nor in the QR's URI
    app = pyotp.TOTP(_secret_on(enrol.text))
    confirmed = client.post(
        "/mfa/enroll",
        data={"csrf_token": factories.csrf(enrol.text), "code": app.now()},
        follow_redirects=False,
    )
    assert confirmed.headers["location"] == "/mfa/recovery-codes?next=%2Faccount"
    assert len(_CODE_ITEM.findall(client.get(confirmed.headers["location"]).text)) == 10
    home = client.get("/account")
    assert home.status_code == 200

    client.post("/signout", data={"csrf_token": factories.csrf(home.text)})
    assert client.get("/account", follow_redirects=False).headers["location"].startswith("/signin")
    signin_page = client.get("/signin")
    signed_in = client.post(
        "/signin",
        data={
            "csrf_token": factories.csrf(signin_page.text),
            "login": "pat@example.org",
            "password": "a long enough passphrase",
        },
        follow_redirects=False,
    )
    assert signed_in.headers["location"] == "/mfa/challenge"
    passed = _post_form(client, "/mfa/challenge", "/mfa/challenge", {"code": _next_code(app)})
    assert passed.headers["location"] == "/account"
    assert client.get("/account").status_code == 200
