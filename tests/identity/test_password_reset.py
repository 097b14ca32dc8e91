"""Forgot password: a link to the verified address, one answer for every address, a reset
that ends every session and grant, signs nobody in and keeps the second factor; the
attacks on the way (unknown, unverified, expired, reused, truncated, foreign links, a
link used by someone signed in as another, floods, header injection)."""

from __future__ import annotations

import contextlib
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest
import redis
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from carebridge import outbox, wiring
from carebridge.app import create_app
from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from carebridge.utc import utcnow
from carebridge.wiring import CareTeamFollowers
from identity import accounts, sessions, throttle
from identity.credentials import password
from identity.flows import reset, signin, status
from identity.models import (
    Account,
    AuthSession,
    LoginIdentifier,
    PasswordCredential,
    PasswordReset,
)
from tests.identity import factories
from tests.identity.oidc import helpers
from tests.identity.reset_mail import Mailbox, reset_token
from tests.identity.roster_helpers import import_roster, link
from tests.realparts import require

LOGIN = "pat@example.org"
OLD_PASSWORD = "old correct horse battery"
NEW_PASSWORD = "new staple orbit lantern"
FORGOT_API = "/api/v1/password/forgot"
RESET_API = "/api/v1/password/reset"


class Clock:
    """The flow's clock (the throttle's, which the flow reads), moved by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = utcnow()
        monkeypatch.setattr(throttle, "utcnow", lambda: self.now)

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


def _account(
    runtime: Runtime, login: str = LOGIN, *, verified: bool = True, second_factor: bool = True
) -> tuple[str, pyotp.TOTP | None]:
    hashed = password.hash_password(runtime.settings, OLD_PASSWORD)
    with transaction(runtime.sessions) as db:
        account_id = accounts.create(db, runtime.keyring, login=login, password_hash=hashed)
        if verified:
            db.execute(
                update(LoginIdentifier)
                .where(LoginIdentifier.account_id == account_id)
                .values(verified_at=utcnow())
            )
    totp = factories.totp(runtime, account_id) if second_factor else None
    return account_id, totp


def _ask(client: TestClient, login: str) -> tuple[int, str]:
    page = client.get("/password/forgot")
    response = client.post(
        "/password/forgot", data={"login": login, "csrf_token": factories.csrf(page.text)}
    )
    return response.status_code, response.text


def _ask_api(client: TestClient, login: str) -> tuple[int, object]:
    response = client.post(FORGOT_API, json={"login": login})
    return response.status_code, response.json()


def _reset_api(client: TestClient, token: str, new_password: str = NEW_PASSWORD) -> int:
    response = client.post(RESET_API, json={"token": token, "password": new_password})
    if response.status_code != 204:
        assert response.headers["content-type"] == "application/problem+json"
    return response.status_code


def _link_token(client: TestClient, runtime: Runtime, mailbox: Mailbox, login: str = LOGIN) -> str:
    assert _ask_api(client, login)[0] == 202
    return reset_token(mailbox.last_to(runtime, login))


def _outbox_rows(runtime: Runtime) -> int:
    with runtime.sessions() as db:
        return db.scalar(select(func.count()).select_from(outbox.OutboxMessage)) or 0


def _works(client: TestClient, session_token: str) -> bool:
    response = client.get("/api/v1/sessions", headers={"Authorization": f"Bearer {session_token}"})
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def _sign_in(client: TestClient, secret: str) -> tuple[int, str | None]:
    response = client.post("/api/v1/signin", json={"login": LOGIN, "password": secret})
    return response.status_code, response.json().get("next_step")


def _audit(runtime: Runtime) -> list[AuditRecord]:
    with runtime.sessions() as db:
        return list(db.scalars(select(AuditRecord).order_by(AuditRecord.seq)))


def _tokens(client: TestClient, registered: helpers.Registered) -> dict[str, str]:
    verifier, challenge = helpers.pkce()
    answer = helpers.approve(client, helpers.authorization_params(registered, challenge))
    response = helpers.exchange(client, registered, answer["code"][0], verifier)
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


def _refresh(client: TestClient, registered: helpers.Registered, token: str) -> int:
    response = client.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": token},
        auth=helpers.basic(registered),
    )
    return response.status_code


def test_forgotten_password_is_reset_by_email_link_ending_sessions_and_grants(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime)
    link(runtime, account_id, import_roster(runtime, tmp_path)["zeb"])
    # Signed in on another device, and an app holds a refresh token.
    session_token = factories.session(runtime, account_id, level=2)
    registered = helpers.register(runtime)
    helpers.use_session(client, runtime, session_token)
    refresh_token = _tokens(client, registered)["refresh_token"]
    client.cookies.clear()

    assert "/password/forgot" in client.get("/signin").text
    status, page = _ask(client, LOGIN)
    assert status == 200 and "we have sent it a link" in page
    email = mailbox.last_to(runtime, LOGIN)
    assert email.subject == "Reset your password"
    assert "30 minutes" in email.text and "ignore this email" in email.text
    token = reset_token(email)

    opened = client.get(f"/password/reset?token={token}", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/password/reset"
    assert opened.headers["referrer-policy"] == "no-referrer"
    form = client.get("/password/reset")
    assert form.status_code == 200 and token not in form.text
    assert 'name="password"' in form.text
    done = client.post(
        "/password/reset",
        data={"password": NEW_PASSWORD, "csrf_token": factories.csrf(form.text)},
    )
    assert done.status_code == 200 and "Your password was changed" in done.text
    assert "carebridge_session" not in done.headers.get("set-cookie", "")  # nobody signed in

    assert not _works(client, session_token)
    assert _refresh(client, registered, refresh_token) == 400
    notice = mailbox.last_to(runtime, LOGIN)
    assert notice.subject == "Your password was reset"
    assert "/password/forgot" in notice.text
    # The new password works, and the second factor is still asked for.
    assert _sign_in(client, OLD_PASSWORD)[0] == 401
    assert _sign_in(client, NEW_PASSWORD) == (200, "challenge")
    with runtime.sessions() as db:
        reset_at = reset.last_password_reset_at(db, account_id)
        credential = db.get(PasswordCredential, account_id)
    assert reset_at is not None and credential is not None and credential.changed_at == reset_at
    records = _audit(runtime)
    assert ("identity.password.reset", "allowed", f"account:{account_id}") in [
        (r.action, r.outcome, r.target) for r in records
    ]
    assert not any(LOGIN in (r.target or "") or LOGIN in r.actor for r in records)  # no address
    # The link worked once.
    assert _reset_api(client, token) == 400


def test_the_api_resets_too_and_signs_nobody_in(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    account_id, _ = _account(runtime, second_factor=False)
    token = _link_token(client, runtime, mailbox)
    response = client.post(RESET_API, json={"token": token, "password": NEW_PASSWORD})
    assert response.status_code == 204 and not response.content
    assert "set-cookie" not in response.headers
    assert _sign_in(client, NEW_PASSWORD)[0] == 200
    with runtime.sessions() as db:
        assert reset.last_password_reset_at(db, account_id) is not None


def test_unknown_address_gets_the_same_answer_and_no_email(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    _account(runtime)
    known = _ask(client, LOGIN)
    unknown = _ask(client, "nobody@example.org")
    assert known == unknown
    assert _ask_api(client, LOGIN) == _ask_api(client, "nobody@example.org")
    assert [sent.to for sent in mailbox.collect(runtime)] == [LOGIN, LOGIN]


def test_unverified_address_gets_no_email(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    _account(runtime, verified=False)
    _account(runtime, "verified@example.org")
    assert _ask_api(client, LOGIN) == _ask_api(client, "verified@example.org")
    assert mailbox.to(runtime, LOGIN) == []
    assert len(mailbox.to(runtime, "verified@example.org")) == 1


def test_mixed_case_and_unicode_addresses_reach_the_one_account(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    _account(runtime)
    assert _ask_api(client, " PAT@Example.ORG ")[0] == 202
    fullwidth = "".join(chr(0xFF00 + ord(c) - 0x20) for c in "pat")  # NFKC: "pat"
    assert _ask_api(client, f"{fullwidth}@example.org")[0] == 202
    assert [sent.to for sent in mailbox.collect(runtime)] == [LOGIN, LOGIN]


def test_expired_reset_token_is_refused(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock
) -> None:
    _account(runtime)
    token = _link_token(client, runtime, mailbox)
    clock.advance(timedelta(minutes=31))
    client.get(f"/password/reset?token={token}", follow_redirects=False)
    page = client.get("/password/reset")
    assert page.status_code == 400 and "This link does not work" in page.text
    assert _reset_api(client, token) == 400
    assert _sign_in(client, OLD_PASSWORD)[0] == 200


def test_reused_reset_token_is_refused(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    _account(runtime)
    token = _link_token(client, runtime, mailbox)
    assert _reset_api(client, token) == 204
    assert _reset_api(client, token, "another fine passphrase") == 400
    assert _sign_in(client, NEW_PASSWORD)[0] == 200


def test_truncated_foreign_and_superseded_reset_tokens_are_refused_alike(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    _account(runtime)
    older = _link_token(client, runtime, mailbox)
    token = _link_token(client, runtime, mailbox)  # a newer link ends the older one
    selector = token.partition(".")[0]
    forged = f"{selector}.{'A' * 43}"  # a real selector, someone else's secret
    answers = set()
    for bad in (older, token[:-1], token[:40], forged, "", "pwr_x.y"):
        response = client.post(RESET_API, json={"token": bad, "password": NEW_PASSWORD})
        assert response.status_code == 400, bad
        answers.add(response.json()["detail"])
    assert answers == {reset.LINK_INVALID}
    assert _reset_api(client, token) == 204  # the newest link still worked


def test_reset_token_used_while_signed_in_as_another_account_resets_only_its_own(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    account_a, _ = _account(runtime)
    account_b, _ = _account(runtime, "bea@example.org")
    b_token = factories.sign_in(client, runtime, account_b, level=2)
    token = _link_token(client, runtime, mailbox)

    client.get(f"/password/reset?token={token}", follow_redirects=False)
    form = client.get("/password/reset")
    done = client.post(
        "/password/reset",
        data={"password": NEW_PASSWORD, "csrf_token": factories.csrf(form.text)},
    )
    assert done.status_code == 200
    assert "carebridge_session" not in done.headers.get("set-cookie", "")
    assert _works(client, b_token)  # B is untouched and still B
    with runtime.sessions() as db:
        hashes = {row.account_id: row.hash for row in db.scalars(select(PasswordCredential)).all()}
    assert password.verify(runtime.settings, hashes[account_a], NEW_PASSWORD).ok
    assert password.verify(runtime.settings, hashes[account_b], OLD_PASSWORD).ok
    assert mailbox.to(runtime, "bea@example.org") == []


def test_flood_of_requests_for_one_address_sends_at_most_a_few_emails(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock
) -> None:
    _account(runtime)
    answers = {str(_ask_api(client, LOGIN)) for _ in range(10)}
    assert len(answers) == 1  # the same answer, sent or not
    assert len(mailbox.to(runtime, LOGIN)) == runtime.settings.emails_per_address_per_hour
    # A flood that goes on does not keep the budget spent.
    clock.advance(timedelta(minutes=30))
    _ask_api(client, LOGIN)
    clock.advance(timedelta(minutes=31))
    assert _ask_api(client, LOGIN)[0] == 202
    assert len(mailbox.to(runtime, LOGIN)) == runtime.settings.emails_per_address_per_hour + 1


def test_the_email_budget_is_shared_by_replicas_through_redis(
    settings: Settings, mailbox: Mailbox
) -> None:
    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        require("Redis", False, f"127.0.0.1:6379: {exc}")
    # Two replicas: one database, one keyring, one Redis. Each test's keys are its own
    # (they are keyed hashes under this keyring's pepper) and expire within the hour.
    shared = settings.model_copy(update={"redis_url": url})
    assert isinstance(throttle.store_for(shared), throttle.RedisStore)
    first, second = Runtime.build(shared), Runtime.build(shared)
    try:
        _account(first)
        with (
            TestClient(create_app(first)) as one,
            TestClient(create_app(second)) as other,
        ):
            for n in range(8):
                assert _ask_api(one if n % 2 else other, LOGIN)[0] == 202
        assert len(mailbox.to(first, LOGIN)) == first.settings.emails_per_address_per_hour
    finally:
        first.close()
        second.close()


def test_flood_from_one_client_address_is_throttled_whatever_the_address(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock
) -> None:
    _account(runtime)
    statuses = [_ask_api(client, f"someone{n}@example.org")[0] for n in range(22)]
    assert statuses[:21] == [202] * 21 and statuses[21] == 429
    assert _ask_api(client, LOGIN)[0] == 429  # a known address the same
    status, page = _ask(client, "nobody@example.org")
    assert status == 429 and "Too many attempts" in page
    assert mailbox.collect(runtime) == []


def test_header_injection_in_the_address_is_refused_and_nothing_queued(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    _account(runtime)
    for attempt in (f"{LOGIN}\r\nBcc: evil@example.net", f"{LOGIN}\nBcc: evil@example.net"):
        assert client.post(FORGOT_API, json={"login": attempt}).status_code == 400
        assert _ask(client, attempt)[0] == 400
    # Two addresses in one: not an address.
    assert _ask_api(client, f"{LOGIN}, evil@example.net")[0] == 400
    assert _outbox_rows(runtime) == 0
    assert mailbox.collect(runtime) == []


def test_a_weak_new_password_is_refused_and_the_link_still_works(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    _account(runtime)
    token = _link_token(client, runtime, mailbox)
    response = client.post(RESET_API, json={"token": token, "password": "password"})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "password"
    assert _reset_api(client, token) == 204


def test_reset_token_guessing_is_throttled_per_account(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, clock: Clock
) -> None:
    _account(runtime)
    token = _link_token(client, runtime, mailbox)
    selector = token.partition(".")[0]
    for n in range(5):
        assert _reset_api(client, f"{selector}.{str(n) * 43}") == 400
    assert _reset_api(client, token) == 400  # locked: the same answer as a bad link
    clock.advance(timedelta(seconds=2))
    assert _reset_api(client, token) == 204


def test_reset_links_are_stored_hashed(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    _account(runtime)
    token = _link_token(client, runtime, mailbox)
    with runtime.sessions() as db:
        (row,) = db.scalars(select(PasswordReset)).all()
    secret = token.partition(".")[2]
    assert len(secret) == 43 and secret not in row.secret_hash
    assert isinstance(row.expires_at, datetime)
    assert timedelta(minutes=29) < row.expires_at - row.created_at <= timedelta(minutes=30)


# Review (issue 19): attacks on the reset's edges.


def test_reset_cookie_is_cleared_with_the_secure_attribute_its_prefix_needs(
    settings: Settings,
) -> None:
    # A __Secure- cookie is only set, or cleared, by a Set-Cookie with Secure: without it
    # browsers ignore the clearing and the token stays in the cookie jar.
    https = Settings(
        data_dir=settings.data_dir,
        database_url=settings.database_url,
        issuer="https://id.example.org",
    )
    runtime = Runtime.build(https)
    try:
        with TestClient(create_app(runtime), base_url="https://id.example.org") as browser:
            opened = browser.get("/password/reset?token=pwr_x.y", follow_redirects=False)
            assert opened.headers["set-cookie"].startswith("__Secure-carebridge_reset=")
            refused = browser.get("/password/reset")
            assert refused.status_code == 400
            cleared = refused.headers["set-cookie"]
            assert cleared.startswith("__Secure-carebridge_reset=")
            attributes = {part.strip().lower() for part in cleared.split(";")[1:]}
            assert {"max-age=0", "secure", "httponly"} <= attributes
    finally:
        runtime.close()


def test_reset_link_of_a_disabled_account_is_refused_and_does_not_enable_it(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    account_id, _ = _account(runtime)
    token = _link_token(client, runtime, mailbox)
    assert status.set_active_by_id(runtime, account_id, active=False, followers=CareTeamFollowers())
    assert _reset_api(client, token) == 400
    assert _ask_api(client, LOGIN)[0] == 202
    assert len(mailbox.to(runtime, LOGIN)) == 1  # no new link for a disabled account
    with runtime.sessions() as db:
        assert db.scalar(select(Account.status).where(Account.id == account_id)) == "disabled"
        credential = db.get(PasswordCredential, account_id)
        assert credential is not None
        assert password.verify(runtime.settings, credential.hash, OLD_PASSWORD).ok


def test_account_disabled_while_the_new_password_is_hashed_keeps_its_password(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The link is checked, then the new password hashed (slow), then the link claimed: an
    # operator disabling the account meanwhile must win.
    account_id, _ = _account(runtime)
    token = _link_token(client, runtime, mailbox)
    real_hash = reset.password.hash_password

    def hash_while_disabled(*args: object, **kwargs: object) -> str:
        status.set_active_by_id(runtime, account_id, active=False, followers=CareTeamFollowers())
        return real_hash(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reset.password, "hash_password", hash_while_disabled)
    assert _reset_api(client, token) == 400
    monkeypatch.undo()
    with runtime.sessions() as db:
        credential = db.get(PasswordCredential, account_id)
        assert credential is not None
        assert password.verify(runtime.settings, credential.hash, OLD_PASSWORD).ok
    assert len(mailbox.to(runtime, LOGIN)) == 1  # no "your password was reset" notice


def test_sign_in_with_the_old_password_racing_a_reset_keeps_no_session(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whoever knows the old password keeps a sign-in in flight: it checks the old hash,
    # the reset commits (ending every session), then the sign-in starts its session.
    account_id, _ = _account(runtime, second_factor=False)
    token = _link_token(client, runtime, mailbox)
    sender = client.app.state.outward.email  # type: ignore[attr-defined]
    real_verify = signin.password.verify

    def verify_then_reset(*args: object, **kwargs: object) -> password.Checked:
        checked = real_verify(*args, **kwargs)  # type: ignore[arg-type]
        reset.reset_password(runtime, sender, token, NEW_PASSWORD, client_host=None)
        return checked

    monkeypatch.setattr(signin.password, "verify", verify_then_reset)
    raced = client.post("/api/v1/signin", json={"login": LOGIN, "password": OLD_PASSWORD})
    monkeypatch.undo()

    assert raced.status_code == 401
    with runtime.sessions() as db:
        assert (
            db.scalars(select(AuthSession).where(AuthSession.account_id == account_id)).all() == []
        )
    assert _sign_in(client, NEW_PASSWORD)[0] == 200


def test_old_access_tokens_are_refused_at_userinfo_and_messaging_after_a_reset(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, tmp_path: Path
) -> None:
    account_id, _ = _account(runtime)
    link(runtime, account_id, import_roster(runtime, tmp_path)["zeb"])
    scope = "openid offline_access messaging.read"
    registered = helpers.register(runtime, scopes=scope, name="Patient App")
    helpers.use_session(client, runtime, factories.session(runtime, account_id, level=2))
    verifier, challenge = helpers.pkce()
    answer = helpers.approve(
        client, helpers.authorization_params(registered, challenge, scope=scope)
    )
    issued = helpers.exchange(client, registered, answer["code"][0], verifier).json()
    bearer = {"Authorization": f"Bearer {issued['access_token']}"}
    assert client.get("/oauth2/userinfo", headers=bearer).status_code == 200
    assert client.get("/api/v1/messaging/threads", headers=bearer).status_code == 200
    client.cookies.clear()

    assert _reset_api(client, _link_token(client, runtime, mailbox)) == 204

    assert client.get("/oauth2/userinfo", headers=bearer).status_code == 401
    assert client.get("/api/v1/messaging/threads", headers=bearer).status_code == 401
    assert _refresh(client, registered, issued["refresh_token"]) == 400


def test_two_simultaneous_resets_with_one_token_change_the_password_once(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    account_id, _ = _account(runtime)
    token = _link_token(client, runtime, mailbox)
    sender = client.app.state.outward.email  # type: ignore[attr-defined]
    real_hash = reset.password.hash_password
    both_checked = threading.Barrier(2, timeout=10)

    def hash_together(*args: object, **kwargs: object) -> str:
        both_checked.wait()  # both requests have passed check(); now both claim
        return real_hash(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reset.password, "hash_password", hash_together)
    outcomes: dict[str, str] = {}

    def use(new_password: str) -> None:
        try:
            reset.reset_password(runtime, sender, token, new_password, client_host=None)
            outcomes[new_password] = "reset"
        except reset.InvalidLinkError:
            outcomes[new_password] = "refused"

    threads = [
        threading.Thread(target=use, args=(p,)) for p in (NEW_PASSWORD, "other fine passphrase")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monkeypatch.undo()
    assert sorted(outcomes.values()) == ["refused", "reset"]
    (winner,) = [p for p, outcome in outcomes.items() if outcome == "reset"]
    with runtime.sessions() as db:
        credential = db.get(PasswordCredential, account_id)
        assert credential is not None
        assert password.verify(runtime.settings, credential.hash, winner).ok
    notices = [s for s in mailbox.to(runtime, LOGIN) if s.subject == "Your password was reset"]
    assert len(notices) == 1


def test_two_sign_ins_that_rehash_the_password_at_once_both_succeed(
    runtime: Runtime, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sign-in's check that the password is unchanged reads it locked for share: two
    # sign-ins of one account must not then both try to upgrade that lock to re-hash it
    # (a deadlock on PostgreSQL).
    _account(runtime, second_factor=False)
    stronger = Runtime.build(settings.model_copy(update={"argon2_memory_kib": 9216}))
    real_start = signin.start_session
    both_checked = threading.Barrier(2, timeout=3)  # SQLite lets one through at a time

    def start_together(*args: Any, **kwargs: Any) -> signin.SignedIn:
        with contextlib.suppress(threading.BrokenBarrierError):
            both_checked.wait()
        return real_start(*args, **kwargs)

    monkeypatch.setattr(signin, "start_session", start_together)
    outcomes: list[str] = []

    def sign_in() -> None:
        credentials = signin.Credentials(login=LOGIN, password=OLD_PASSWORD)
        try:
            signed = signin.sign_in(
                stronger,
                credentials,
                client_host=None,
                email=wiring.identity_outward(stronger).email,
            )
            assert isinstance(signed, signin.SignedIn)
            outcomes.append("signed in")
        except Exception as exc:  # noqa: BLE001  (what went wrong is the finding)
            outcomes.append(type(exc).__name__)

    try:
        threads = [threading.Thread(target=sign_in) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stronger.close()
    assert outcomes == ["signed in", "signed in"]
    with runtime.sessions() as db:
        stored = db.scalars(select(PasswordCredential.hash)).one()
    assert "$m=9216," in stored


def test_reauthentication_with_the_old_password_racing_a_reset_keeps_no_session(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A session and the old password: re-authentication checks the password, finds the
    # session still there, and the reset commits (ending every session) just before the
    # renewed session is written. The reset must end the renewed one too. (An account
    # with an authenticator re-authenticates with a code, never its password.)
    account_id, _ = _account(runtime, second_factor=False)
    session_token = factories.session(runtime, account_id, level=2)
    token = _link_token(client, runtime, mailbox)
    sender = client.app.state.outward.email  # type: ignore[attr-defined]
    real_start = sessions.start
    resets: list[threading.Thread] = []

    def reset_then_start(*args: Any, **kwargs: Any) -> sessions.Started:
        racing = threading.Thread(
            target=reset.reset_password,
            args=(runtime, sender, token, NEW_PASSWORD),
            kwargs={"client_host": None},
        )
        racing.start()
        racing.join(timeout=2)  # as far as the re-authentication's locks let it go
        resets.append(racing)
        return real_start(*args, **kwargs)

    monkeypatch.setattr(sessions, "start", reset_then_start)
    client.post(
        "/api/v1/reauth",
        json={"password": OLD_PASSWORD},
        headers={"Authorization": f"Bearer {session_token}"},
    )
    monkeypatch.undo()
    for racing in resets:
        racing.join()

    with runtime.sessions() as db:
        assert (
            db.scalars(select(AuthSession).where(AuthSession.account_id == account_id)).all() == []
        )
    assert _sign_in(client, NEW_PASSWORD)[0] == 200
