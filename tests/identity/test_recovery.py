"""Lost second factor without a recovery code: the e-mailed link (this browser only), date
of birth and SSN last 4 against the account's own roster record, the wait (shortened by
configuration, the clock moved), "this wasn't me", a two-factor sign-in that stops it,
and the attacks on the way."""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from carebridge import outbox
from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from carebridge.utc import utcnow
from identity import accounts, one_time_rows, sessions, throttle
from identity.credentials import password
from identity.models import (
    AuthSession,
    LoginIdentifier,
    PatientLink,
    RecoveryCode,
    RecoveryRequest,
    TotpCredential,
)
from sms.backends import ConsoleSender
from sms.jobs import SmsChannel
from tests.identity import factories
from tests.identity.reset_mail import Mailbox, Sent, reset_token
from tests.identity.roster_helpers import ZEB, import_roster, link
from tests.sms.helpers import verified_number

LOGIN = "pat@example.org"
PASSWORD = "correct horse battery staple"
DOB, SSN4 = ZEB[2], ZEB[3]
_LINK = re.compile(r"https?://\S+/recovery/link\?token=(\S+)")
_CANCEL = re.compile(r"https?://\S+/recovery/cancel\?token=(\S+)")


class Clock:
    """The flow's clock (the throttle's, which the flow reads), moved by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = utcnow()
        monkeypatch.setattr(throttle, "utcnow", lambda: self.now)

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # The wait shortened by configuration (not skipped): one hour.
    return Settings(data_dir=tmp_path / "data", database_url=database_url, recovery_wait_hours=1)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


def _account(
    runtime: Runtime, tmp_path: Path, *, verified: bool = True, roster: bool = True
) -> tuple[str, pyotp.TOTP]:
    hashed = password.hash_password(runtime.settings, PASSWORD)
    with transaction(runtime.sessions) as db:
        account_id = accounts.create(db, runtime.keyring, login=LOGIN, password_hash=hashed)
        if verified:
            db.execute(
                update(LoginIdentifier)
                .where(LoginIdentifier.account_id == account_id)
                .values(verified_at=utcnow())
            )
    if roster:
        link(runtime, account_id, import_roster(runtime, tmp_path)["zeb"])
    return account_id, factories.totp(runtime, account_id)


def _sign_in(client: TestClient, runtime: Runtime, secret: str = PASSWORD) -> str:
    """A password sign-in (level 1) whose cookie ``client`` now presents."""
    response = client.post("/api/v1/signin", json={"login": LOGIN, "password": secret})
    assert response.status_code == 200, response.text
    token: str = response.json()["session_token"]
    factories.use_token(client, runtime, token)
    return token


def _post(client: TestClient, path: str, page: str, data: dict[str, str] | None = None) -> str:
    form = client.get(page)
    response = client.post(path, data={**(data or {}), "csrf_token": factories.csrf(form.text)})
    return response.text


def _token(sent: Sent, pattern: re.Pattern[str]) -> str:
    match = pattern.search(sent.text)
    assert match, sent.text
    assert match.group(0) in sent.html
    return match.group(1)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _api_to_waiting(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, session_token: str
) -> str:
    """Start, follow the link, prove identity by the API; returns the cancel token."""
    assert client.post("/api/v1/recovery/start", headers=_bearer(session_token)).status_code == 202
    token = _token(mailbox.last_to(runtime, LOGIN), _LINK)
    followed = client.post(
        "/api/v1/recovery/link", json={"token": token}, headers=_bearer(session_token)
    )
    assert followed.status_code == 204, followed.text
    proved = client.post(
        "/api/v1/recovery/identity",
        json={"dob": DOB, "ssn4": SSN4},
        headers=_bearer(session_token),
    )
    assert proved.status_code == 200, proved.text
    return _token(mailbox.last_to(runtime, LOGIN), _CANCEL)


def _state(runtime: Runtime, account_id: str) -> list[str]:
    with runtime.sessions() as db:
        return list(
            db.scalars(
                select(RecoveryRequest.state)
                .where(RecoveryRequest.account_id == account_id)
                .order_by(RecoveryRequest.created_at)
            )
        )


def _factors(runtime: Runtime, account_id: str) -> tuple[bool, int]:
    with runtime.sessions() as db:
        has_totp = db.get(TotpCredential, account_id) is not None
        codes = len(
            db.scalars(select(RecoveryCode).where(RecoveryCode.account_id == account_id)).all()
        )
    return has_totp, codes


def test_lost_authenticator_is_replaced_after_email_identity_and_the_wait(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    other_device = factories.session(runtime, account_id, level=2)
    _sign_in(client, runtime)

    challenge = client.get("/mfa/challenge")
    assert "Lost your authenticator and recovery codes?" in challenge.text
    page = _post(client, "/recovery/start", "/recovery")
    assert "We sent a link" in page
    email = mailbox.last_to(runtime, LOGIN)
    assert email.subject == "Continue recovering your account"
    assert ZEB[0] not in email.text and DOB not in email.text  # no PHI
    token = _token(email, _LINK)

    opened = client.get(f"/recovery/link?token={token}", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/recovery"
    assert opened.headers["referrer-policy"] == "no-referrer"
    page = _post(client, "/recovery/identity", "/recovery", {"dob": DOB, "ssn4": SSN4})
    assert "you can set up a new authenticator after" in page
    notice = mailbox.last_to(runtime, LOGIN)
    assert notice.subject == "Your second factor will be replaced"
    assert _CANCEL.search(notice.text)
    # Not before the wait is over.
    assert "Set up a new authenticator" not in client.get("/recovery").text
    assert client.post("/api/v1/recovery/complete").status_code in (401, 409)
    assert _factors(runtime, account_id)[0]

    clock.advance(timedelta(hours=1, seconds=1))
    # A new sign-in with the password, after the wait: led to finish and enrol.
    client.cookies.clear()
    _sign_in(client, runtime)
    ready = client.get("/recovery")
    assert "Set up a new authenticator" in ready.text
    done = client.post(
        "/recovery/complete",
        data={"csrf_token": factories.csrf(ready.text)},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == "/mfa/enroll"
    assert _factors(runtime, account_id) == (False, 0)
    assert _state(runtime, account_id) == ["completed"]
    assert mailbox.last_to(runtime, LOGIN).subject == "Account recovery completed"
    with runtime.sessions() as db:
        handles = db.scalars(select(AuthSession).where(AuthSession.account_id == account_id))
        assert len(list(handles)) == 1  # every other session ended
    assert client.get("/api/v1/sessions", headers=_bearer(other_device)).status_code == 401

    # Enrolment: a new seed, then new recovery codes shown once.
    enrol = client.get("/mfa/enroll")
    assert enrol.status_code == 200
    secret = re.search(r'id="secret">([A-Z2-7 ]+)<', enrol.text)
    assert secret, enrol.text
    confirmed = client.post(
        "/mfa/enroll",
        data={
            "code": pyotp.TOTP(secret.group(1).replace(" ", "")).now(),
            "csrf_token": factories.csrf(enrol.text),
        },
        follow_redirects=False,
    )
    assert confirmed.status_code == 303
    assert confirmed.headers["location"].startswith("/mfa/recovery-codes")
    assert _factors(runtime, account_id) == (True, 10)
    with runtime.sessions() as db:
        records = list(db.scalars(select(AuditRecord).order_by(AuditRecord.seq)))
    actions = [r.action for r in records]
    for action in ("identity.recovery.start", "identity.recovery.waiting"):
        assert action in actions
    assert not any(LOGIN in (r.target or "") or DOB in (r.target or "") for r in records)


def test_this_wasnt_me_link_stops_the_recovery(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    session_token = _sign_in(client, runtime)
    cancel = _api_to_waiting(client, runtime, mailbox, session_token)

    page = client.get(f"/recovery/cancel?token={cancel}")
    assert page.status_code == 200 and "This wasn't me" in page.text
    assert _state(runtime, account_id) == ["waiting"]  # a GET changes nothing
    stopped = client.post(
        "/recovery/cancel", data={"token": cancel, "csrf_token": factories.csrf(page.text)}
    )
    assert stopped.status_code == 200 and "was stopped" in stopped.text
    assert _state(runtime, account_id) == ["cancelled"]
    assert mailbox.last_to(runtime, LOGIN).subject == "Account recovery stopped"

    clock.advance(timedelta(hours=2))
    response = client.post("/api/v1/recovery/complete", headers=_bearer(session_token))
    assert response.status_code == 401  # and the session that asked is gone
    fresh = _sign_in(client, runtime)
    response = client.post("/api/v1/recovery/complete", headers=_bearer(fresh))
    assert response.status_code == 409
    assert _factors(runtime, account_id) == (True, 0)
    # The cancel link worked once.
    assert client.post("/api/v1/recovery/cancel", json={"token": cancel}).status_code == 400


def test_two_factor_sign_in_cancels_the_recovery(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    account_id, totp = _account(runtime, tmp_path)
    attacker = _sign_in(client, runtime)
    _api_to_waiting(client, runtime, mailbox, attacker)

    owner = _sign_in(client, runtime)
    passed = client.post("/api/v1/mfa/challenge", json={"code": totp.now()}, headers=_bearer(owner))
    assert passed.status_code == 200, passed.text
    assert _state(runtime, account_id) == ["cancelled"]
    assert mailbox.last_to(runtime, LOGIN).subject == "Account recovery stopped"
    clock.advance(timedelta(hours=2))
    response = client.post("/api/v1/recovery/complete", headers=_bearer(attacker))
    assert response.status_code == 401  # and the session that asked is gone
    assert _factors(runtime, account_id)[0]


def test_attacker_with_password_and_dob_cannot_skip_the_wait(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    session_token = _sign_in(client, runtime)
    _api_to_waiting(client, runtime, mailbox, session_token)
    clock.advance(timedelta(minutes=59))
    response = client.post("/api/v1/recovery/complete", headers=_bearer(session_token))
    assert response.status_code == 409
    # Enrolling directly is refused too: the account still has its authenticator.
    assert client.post("/api/v1/mfa/totp/enroll", headers=_bearer(session_token)).status_code in (
        401,
        403,
    )
    assert _factors(runtime, account_id)[0]
    clock.advance(timedelta(minutes=2))
    response = client.post("/api/v1/recovery/complete", headers=_bearer(session_token))
    assert response.status_code == 204


def test_wrong_dob_and_ssn_are_counted_by_the_roster_throttles(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    session_token = _sign_in(client, runtime)
    client.post("/api/v1/recovery/start", headers=_bearer(session_token))
    token = _token(mailbox.last_to(runtime, LOGIN), _LINK)
    client.post("/api/v1/recovery/link", json={"token": token}, headers=_bearer(session_token))
    statuses = [
        client.post(
            "/api/v1/recovery/identity",
            json={"dob": DOB, "ssn4": f"{n:04d}"},
            headers=_bearer(session_token),
        ).status_code
        for n in range(5)
    ]
    assert statuses == [422] * 5
    # The account's verification is locked (the roster's own counter): even the right
    # details are refused now, until staff review.
    locked = client.post(
        "/api/v1/recovery/identity",
        json={"dob": DOB, "ssn4": SSN4},
        headers=_bearer(session_token),
    )
    assert locked.status_code == 403
    store = throttle.store_for(runtime.settings)
    policy = throttle.VERIFY_ACCOUNT
    limit = throttle.Limit(policy, f"{policy.prefix}:{account_id}")
    with runtime.sessions() as db:
        assert store.state(db, limit, throttle.utcnow()).failures == 5
    assert _state(runtime, account_id) == ["started"]


def test_recovery_refused_within_7_days_of_a_password_reset(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    _account(runtime, tmp_path)
    assert client.post("/api/v1/password/forgot", json={"login": LOGIN}).status_code == 202
    reset = reset_token(mailbox.last_to(runtime, LOGIN))
    new_password = "a brand new long passphrase"
    answer = client.post("/api/v1/password/reset", json={"token": reset, "password": new_password})
    assert answer.status_code == 204
    session_token = _sign_in(client, runtime, new_password)
    refused = client.post("/api/v1/recovery/start", headers=_bearer(session_token))
    assert refused.status_code == 403 and "7 days" in refused.json()["detail"]
    page = _post(client, "/recovery/start", "/recovery")
    assert "7 days" in page
    sent = len(mailbox.to(runtime, LOGIN))
    clock.advance(timedelta(days=7, minutes=1))
    assert client.post("/api/v1/recovery/start", headers=_bearer(session_token)).status_code == 202
    assert len(mailbox.to(runtime, LOGIN)) == sent + 1


def test_recovery_refused_within_7_days_of_an_address_change(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    with transaction(runtime.sessions) as db:
        db.execute(
            update(LoginIdentifier)
            .where(LoginIdentifier.account_id == account_id)
            .values(changed_at=utcnow() - timedelta(days=2))
        )
    session_token = _sign_in(client, runtime)
    refused = client.post("/api/v1/recovery/start", headers=_bearer(session_token))
    assert refused.status_code == 403
    assert mailbox.to(runtime, LOGIN) == []
    clock.advance(timedelta(days=5, minutes=1))
    assert client.post("/api/v1/recovery/start", headers=_bearer(session_token)).status_code == 202


def test_no_verified_address_or_no_roster_link_says_contact_support(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path, roster=False)
    session_token = _sign_in(client, runtime)
    refused = client.post("/api/v1/recovery/start", headers=_bearer(session_token))
    assert refused.status_code == 403 and "Contact support" in refused.json()["detail"]
    with transaction(runtime.sessions) as db:
        db.execute(
            update(LoginIdentifier)
            .where(LoginIdentifier.account_id == account_id)
            .values(verified_at=None)
        )
    refused = client.post("/api/v1/recovery/start", headers=_bearer(session_token))
    assert refused.status_code == 403 and "no confirmed email" in refused.json()["detail"]
    assert mailbox.collect(runtime) == []


def test_link_opened_in_another_browser_does_nothing(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    session_token = _sign_in(client, runtime)
    client.post("/api/v1/recovery/start", headers=_bearer(session_token))
    token = _token(mailbox.last_to(runtime, LOGIN), _LINK)
    client.cookies.clear()
    page = client.get(f"/recovery/link?token={token}")
    assert page.status_code == 400 and "only in the browser where you asked" in page.text
    # Another session of the same account (another browser): the same.
    other = _sign_in(client, runtime)
    page = client.get(f"/recovery/link?token={token}")
    assert page.status_code == 400 and "only in the browser" in page.text
    answer = client.post("/api/v1/recovery/link", json={"token": token}, headers=_bearer(other))
    assert answer.status_code == 400
    # Still usable where it was asked for.
    answer = client.post(
        "/api/v1/recovery/link", json={"token": token}, headers=_bearer(session_token)
    )
    assert answer.status_code == 204
    assert _state(runtime, account_id) == ["started"]


def test_expired_reused_truncated_and_foreign_recovery_tokens_are_refused(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    _account(runtime, tmp_path)
    session_token = _sign_in(client, runtime)

    def follow(token: str) -> int:
        return client.post(
            "/api/v1/recovery/link", json={"token": token}, headers=_bearer(session_token)
        ).status_code

    client.post("/api/v1/recovery/start", headers=_bearer(session_token))
    token = _token(mailbox.last_to(runtime, LOGIN), _LINK)
    assert follow(token[:-1]) == 400  # truncated
    assert follow(token.split(".")[0] + "." + "A" * 43) == 400  # forged secret
    assert follow("rcv_" + "x" * 22 + "." + "y" * 43) == 400  # foreign
    clock.advance(timedelta(minutes=31))
    assert follow(token) == 400  # expired
    clock.advance(timedelta(minutes=-31))
    assert follow(token) == 204
    assert follow(token) == 400  # reused
    assert client.post("/api/v1/recovery/cancel", json={"token": token}).status_code == 400


def test_identity_step_needs_the_link_first(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    session_token = _sign_in(client, runtime)
    client.post("/api/v1/recovery/start", headers=_bearer(session_token))
    skipped = client.post(
        "/api/v1/recovery/identity",
        json={"dob": DOB, "ssn4": SSN4},
        headers=_bearer(session_token),
    )
    assert skipped.status_code == 422
    assert _state(runtime, account_id) == ["started"]


def test_password_reset_during_the_wait_stops_the_recovery(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    attacker = _sign_in(client, runtime)
    _api_to_waiting(client, runtime, mailbox, attacker)
    # The owner takes the account back by resetting the password during the wait.
    assert client.post("/api/v1/password/forgot", json={"login": LOGIN}).status_code == 202
    reset = reset_token(mailbox.last_to(runtime, LOGIN))
    new_password = "a brand new long passphrase"
    answer = client.post("/api/v1/password/reset", json={"token": reset, "password": new_password})
    assert answer.status_code == 204
    clock.advance(timedelta(hours=2))
    again = _sign_in(client, runtime, new_password)  # even with the new password
    assert client.post("/api/v1/recovery/complete", headers=_bearer(again)).status_code == 409
    assert _state(runtime, account_id) == ["cancelled"]
    assert _factors(runtime, account_id)[0]


def test_flood_of_recovery_requests_does_not_mail_bomb_the_owner(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    _account(runtime, tmp_path)
    session_token = _sign_in(client, runtime)
    statuses = [
        client.post("/api/v1/recovery/start", headers=_bearer(session_token)).status_code
        for _ in range(8)
    ]
    budget = runtime.settings.emails_per_address_per_hour
    assert statuses[:budget] == [202] * budget
    assert set(statuses[budget:]) == {429}
    assert len(mailbox.to(runtime, LOGIN)) == budget
    # The newest link is the one that works; the replaced ones do not.
    links = [_token(sent, _LINK) for sent in mailbox.to(runtime, LOGIN)]
    for old in links[:-1]:
        answer = client.post(
            "/api/v1/recovery/link", json={"token": old}, headers=_bearer(session_token)
        )
        assert answer.status_code == 400
    answer = client.post(
        "/api/v1/recovery/link", json={"token": links[-1]}, headers=_bearer(session_token)
    )
    assert answer.status_code == 204


def test_recovery_link_of_one_account_does_nothing_for_another(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    victim = _sign_in(client, runtime)
    client.post("/api/v1/recovery/start", headers=_bearer(victim))
    token = _token(mailbox.last_to(runtime, LOGIN), _LINK)
    other = "other@example.org"
    hashed = password.hash_password(runtime.settings, PASSWORD)
    with transaction(runtime.sessions) as db:
        other_id = accounts.create(db, runtime.keyring, login=other, password_hash=hashed)
        db.execute(
            update(LoginIdentifier)
            .where(LoginIdentifier.account_id == other_id)
            .values(verified_at=utcnow())
        )
    signed = client.post("/api/v1/signin", json={"login": other, "password": PASSWORD})
    intruder = signed.json()["session_token"]
    answer = client.post("/api/v1/recovery/link", json={"token": token}, headers=_bearer(intruder))
    assert answer.status_code == 400
    # Nothing moved: the owner's own session still follows it.
    answer = client.post("/api/v1/recovery/link", json={"token": token}, headers=_bearer(victim))
    assert answer.status_code == 204
    assert _state(runtime, account_id) == ["started"]


def _levels(runtime: Runtime, account_id: str) -> list[int]:
    with runtime.sessions() as db:
        query = select(AuthSession.level).where(AuthSession.account_id == account_id)
        return sorted(db.scalars(query))


def test_this_wasnt_me_ends_the_intruders_password_only_sessions(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    factories.session(runtime, account_id, level=2)  # the owner, signed in before
    intruder = _sign_in(client, runtime)
    cancel = _api_to_waiting(client, runtime, mailbox, intruder)
    assert client.post("/api/v1/recovery/cancel", json={"token": cancel}).status_code == 204
    # The password is known to someone else: their password-only session ends, so they
    # cannot go on (or start again) from it; the owner's two-factor session stays.
    assert client.post("/api/v1/recovery/start", headers=_bearer(intruder)).status_code == 401
    assert _levels(runtime, account_id) == [2]


def test_two_factor_sign_in_ends_the_intruders_password_only_sessions(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    account_id, totp = _account(runtime, tmp_path)
    intruder = _sign_in(client, runtime)
    _api_to_waiting(client, runtime, mailbox, intruder)
    owner = _sign_in(client, runtime)
    passed = client.post("/api/v1/mfa/challenge", json={"code": totp.now()}, headers=_bearer(owner))
    assert passed.status_code == 200, passed.text
    assert _state(runtime, account_id) == ["cancelled"]
    assert client.post("/api/v1/recovery/start", headers=_bearer(intruder)).status_code == 401
    assert _levels(runtime, account_id) == [2]


def test_step_up_with_the_authenticator_cancels_the_recovery(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    account_id, totp = _account(runtime, tmp_path)
    owner = factories.session(runtime, account_id, level=2)  # signed in before it began
    intruder = _sign_in(client, runtime)
    _api_to_waiting(client, runtime, mailbox, intruder)
    # The owner confirms it's them with the authenticator: the factor is not lost.
    again = client.post("/api/v1/reauth", json={"code": totp.now()}, headers=_bearer(owner))
    assert again.status_code == 200, again.text
    assert _state(runtime, account_id) == ["cancelled"]
    assert mailbox.last_to(runtime, LOGIN).subject == "Account recovery stopped"
    clock.advance(timedelta(hours=2))
    response = client.post("/api/v1/recovery/complete", headers=_bearer(intruder))
    assert response.status_code in (401, 409)
    assert _factors(runtime, account_id)[0]


def test_recovery_link_email_tells_the_owner_their_password_is_known(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    # Only a password sign-in can ask for the link: the owner who did not ask must not
    # be told to ignore it.
    _account(runtime, tmp_path)
    intruder = _sign_in(client, runtime)
    assert client.post("/api/v1/recovery/start", headers=_bearer(intruder)).status_code == 202
    sent = mailbox.last_to(runtime, LOGIN)
    assert "someone knows your password" in sent.text
    assert "someone knows your password" in sent.html
    assert "ignore this email" not in sent.text


def test_password_reset_early_in_a_long_wait_still_stops_the_recovery(  # noqa: PLR0917
    client: TestClient,
    runtime: Runtime,
    mailbox: Mailbox,
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The wait may be configured longer than the 7 days a reset is "recent" for.
    longer = runtime.settings.model_copy(update={"recovery_wait_hours": 24 * 14})
    monkeypatch.setattr(runtime, "settings", longer)
    account_id, _ = _account(runtime, tmp_path)
    intruder = _sign_in(client, runtime)
    _api_to_waiting(client, runtime, mailbox, intruder)
    clock.advance(timedelta(days=1))
    assert client.post("/api/v1/password/forgot", json={"login": LOGIN}).status_code == 202
    reset = reset_token(mailbox.last_to(runtime, LOGIN))
    new_password = "a brand new long passphrase"
    answer = client.post("/api/v1/password/reset", json={"token": reset, "password": new_password})
    assert answer.status_code == 204
    clock.advance(timedelta(days=13, hours=1))  # the wait is over, the reset 13 days old
    again = _sign_in(client, runtime, new_password)
    assert client.post("/api/v1/recovery/complete", headers=_bearer(again)).status_code == 409
    assert _state(runtime, account_id) == ["cancelled"]
    assert _factors(runtime, account_id)[0]


def test_completing_a_recovery_once_the_purge_could_take_the_reset_that_stopped_it_is_refused(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    # A waiting request stays open after its wait until someone completes it; the reset
    # that stops it must outlive the purge's 30 days for used resets.
    account_id, _ = _account(runtime, tmp_path)
    intruder = _sign_in(client, runtime)
    _api_to_waiting(client, runtime, mailbox, intruder)
    clock.advance(timedelta(minutes=30))
    assert client.post("/api/v1/password/forgot", json={"login": LOGIN}).status_code == 202
    reset = reset_token(mailbox.last_to(runtime, LOGIN))
    new_password = "a brand new long passphrase"
    answer = client.post("/api/v1/password/reset", json={"token": reset, "password": new_password})
    assert answer.status_code == 204
    clock.advance(timedelta(days=40))
    one_time_rows.purge(runtime, clock.now)
    # Whoever has the mailbox (and so could reset) signs in with the new password.
    again = _sign_in(client, runtime, new_password)
    assert client.post("/api/v1/recovery/complete", headers=_bearer(again)).status_code == 409
    assert _state(runtime, account_id) == ["cancelled"]
    assert _factors(runtime, account_id)[0]


# The other sign-in method: the patient's verified number (sms), through the outbox


def _texts(runtime: Runtime) -> list[str]:
    """Deliver the outbox's SMS rows; the texts' bodies, by the console sender."""
    out = StringIO()
    sms = SmsChannel(runtime, ConsoleSender(out=out))
    outbox.drain(runtime, outbox.Channels(handlers={sms.channel: sms}))
    return [line.partition("] ")[2] for line in out.getvalue().splitlines()]


def test_the_wait_and_its_end_are_texted_to_the_verified_number_whatever_its_preferences(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    with runtime.sessions() as db:
        patient_id = db.scalars(
            select(PatientLink.patient_id).where(PatientLink.account_id == account_id)
        ).one()
    # Message notifications turned off: a security notice goes all the same.
    verified_number(runtime, patient_id, "+12025550143", sms_enabled=False)
    session_token = _sign_in(client, runtime)
    assert _texts(runtime) == []  # starting (the password alone) texts nothing
    cancel = _api_to_waiting(client, runtime, mailbox, session_token)

    (waiting,) = _texts(runtime)
    texted = _CANCEL.search(waiting)
    assert texted and texted.group(1) == cancel  # the e-mail's "this wasn't me" link
    clock.advance(timedelta(hours=1, minutes=1))
    done = client.post("/api/v1/recovery/complete", headers=_bearer(session_token))
    assert done.status_code == 204, done.text
    (completed,) = _texts(runtime)
    assert "/password/forgot" in completed
    for text in (waiting, completed):
        assert "wasn't you" in text and "STOP" in text
        assert not any(part in text for part in (ZEB[0], ZEB[1], DOB, SSN4, LOGIN))


def test_the_texted_this_wasnt_me_link_stops_the_recovery(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    with runtime.sessions() as db:
        patient_id = db.scalars(
            select(PatientLink.patient_id).where(PatientLink.account_id == account_id)
        ).one()
    verified_number(runtime, patient_id, "+12025550143")
    _api_to_waiting(client, runtime, mailbox, _sign_in(client, runtime))
    texted = _CANCEL.search(_texts(runtime)[0])
    assert texted
    stopped = client.post("/api/v1/recovery/cancel", json={"token": texted.group(1)})
    assert stopped.status_code == 204, stopped.text
    assert _state(runtime, account_id) == ["cancelled"]


def test_no_verified_number_means_no_text_and_the_recovery_goes_on(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    _api_to_waiting(client, runtime, mailbox, _sign_in(client, runtime))
    assert _texts(runtime) == []
    assert _state(runtime, account_id) == ["waiting"]


def test_recovery_from_a_social_sign_in_is_refused(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock, tmp_path: Path
) -> None:
    # A provider that is also the mailbox (a Google account and its Gmail) would give an
    # intruder the first step and the link at once: recovery wants the password.
    account_id, _ = _account(runtime, tmp_path)
    social = factories.session(
        runtime, account_id, level=1, first_factor=sessions.upstream("google")
    )
    factories.use_token(client, runtime, social)
    page = client.get("/recovery")
    assert page.status_code == 403
    assert "sign in with your email address and password" in page.text
    refused = client.post("/api/v1/recovery/start", headers=_bearer(social))
    assert refused.status_code == 403
    assert "Forgot your password?" in refused.json()["detail"]
    assert mailbox.collect(runtime) == []

    # A password sign-in gets to the wait; finishing it from the social session is refused.
    _api_to_waiting(client, runtime, mailbox, _sign_in(client, runtime))
    clock.advance(timedelta(hours=1, seconds=1))
    social = factories.session(
        runtime, account_id, level=1, first_factor=sessions.upstream("google")
    )
    finish = client.post("/api/v1/recovery/complete", headers=_bearer(social))
    assert finish.status_code == 403
    assert _factors(runtime, account_id)[0]  # the authenticator is still there


def test_a_session_from_before_first_factors_were_recorded_cannot_recover(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime, tmp_path)
    token = factories.session(runtime, account_id, level=1)
    with transaction(runtime.sessions) as db:
        db.execute(update(AuthSession).values(first_factor=None))  # as migration 0024 left it
    refused = client.post("/api/v1/recovery/start", headers=_bearer(token))
    assert refused.status_code == 403
    assert mailbox.collect(runtime) == []
