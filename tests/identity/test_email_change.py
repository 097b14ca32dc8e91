"""Changing the e-mail address: after a step-up, confirmed from the new address (code in
the same session, or link anywhere); the old address can undo it for 7 days with a new
password; no password reset through the new address meanwhile. Through HTTP, both
databases, reading the e-mails the outbox delivered."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity import accounts
from identity.credentials import password
from identity.models import (
    EmailChange,
    EmailVerification,
    LoginIdentifier,
    PasswordCredential,
    RecoveryRequest,
)
from tests.identity import factories
from tests.identity.account_changes import (
    PASSWORD,
    bearer,
    grant,
    patient,
    post_form,
    refreshes,
)
from tests.identity.reset_mail import Mailbox, Sent

NEW = "new.pat@example.net"
NEW_PASSWORD = "an entirely different passphrase"
CHANGE_API = "/api/v1/account/email/change"
VERIFY_API = "/api/v1/account/email/change/verify"
CONFIRM_API = "/api/v1/email/change/confirm"
UNDO_API = "/api/v1/email/undo"
_CODE = re.compile(r"\b([0-9A-Z]{4}-[0-9A-Z]{4})\b")
_CONFIRM = re.compile(r"https?://\S+/email/change/confirm\?token=(\S+)")
_UNDO = re.compile(r"https?://\S+/email/undo\?token=(\S+)")


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


def _code(sent: Sent) -> str:
    match = _CODE.search(sent.text)
    assert match, sent.text
    return match.group(1)


def _token(pattern: re.Pattern[str], sent: Sent) -> str:
    match = pattern.search(sent.text)
    assert match, sent.text
    assert match.group(0) in sent.html
    return match.group(1)


def _actions(runtime: Runtime) -> list[str]:
    with runtime.sessions() as db:
        return [r.action for r in db.scalars(select(AuditRecord).order_by(AuditRecord.seq))]


def _login_row(runtime: Runtime, account_id: str) -> LoginIdentifier:
    with runtime.sessions() as db:
        row = db.get(LoginIdentifier, account_id)
        assert row is not None
        return row


def _login(runtime: Runtime, account_id: str) -> str | None:
    with runtime.sessions() as db:
        return accounts.login_of(db, runtime.keyring, account_id)


def _signs_in(client: TestClient, login: str, secret: str) -> bool:
    response = client.post("/api/v1/signin", json={"login": login, "password": secret})
    return response.status_code == 200


def _changed_by_code(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, new: str = NEW
) -> tuple[str, str]:
    """A patient who changed their address to ``new`` by the API: (account, session)."""
    pat = patient(runtime)
    token = factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    asked = client.post(CHANGE_API, json={"login": new}, headers=bearer(token))
    assert asked.status_code == 202, asked.text
    code = _code(mailbox.last_to(runtime, new))
    done = client.post(VERIFY_API, json={"code": code}, headers=bearer(token))
    assert done.status_code == 200, done.text
    return pat.account_id, token


def test_stolen_session_cannot_change_the_email_without_the_second_factor(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    pat = patient(runtime)
    token = factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=False)
    page = client.get("/account/email/change", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/reauth?next=")
    refused = client.post(CHANGE_API, json={"login": NEW}, headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json()["step_up"] == "reauth"
    assert mailbox.to(runtime, NEW) == []
    assert _login(runtime, pat.account_id) == pat.login


def test_the_code_in_the_same_session_changes_the_address_and_tells_both(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    pat = patient(runtime)
    token = factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    asked = client.post(CHANGE_API, json={"login": NEW}, headers=bearer(token))
    assert asked.status_code == 202
    assert asked.json() == {"next_step": "verify_email"}
    # Nothing changes before the code comes back.
    assert _login(runtime, pat.account_id) == pat.login
    sent = mailbox.last_to(runtime, NEW)
    assert sent.subject == "Confirm your new email address"
    done = client.post(VERIFY_API, json={"code": _code(sent)}, headers=bearer(token))
    assert done.status_code == 200, done.text
    assert _login(runtime, pat.account_id) == NEW
    row = _login_row(runtime, pat.account_id)
    assert row.verified_at is not None
    assert row.changed_at is not None
    notice = mailbox.last_to(runtime, pat.login)
    assert notice.subject == "Your email address was changed"
    assert "7 days" in notice.text
    _token(_UNDO, notice)
    assert mailbox.last_to(runtime, NEW).subject == "Your new email address is confirmed"
    assert _signs_in(client, NEW, PASSWORD)
    assert not _signs_in(client, pat.login, PASSWORD)
    assert "identity.email.change" in _actions(runtime)
    # The code works once.
    again = client.post(VERIFY_API, json={"code": _code(sent)}, headers=bearer(token))
    assert again.status_code == 400


def test_the_link_changes_the_address_in_any_browser(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    pat = patient(runtime)
    factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    asked = post_form(client, "/account/email/change", "/account/email/change", {"login": NEW})
    assert asked.status_code == 303
    assert asked.headers["location"] == "/account/email/change?sent=1"
    link = _token(_CONFIRM, mailbox.last_to(runtime, NEW))
    client.cookies.clear()  # another browser, nobody signed in
    shown = client.get(f"/email/change/confirm?token={link}")
    assert shown.status_code == 200
    assert shown.headers["referrer-policy"] == "same-origin"
    assert _login(runtime, pat.account_id) == pat.login  # a GET changes nothing
    done = client.post(
        "/email/change/confirm", data={"token": link, "csrf_token": factories.csrf(shown.text)}
    )
    assert done.status_code == 200
    assert "Your email address was changed" in done.text
    assert _login(runtime, pat.account_id) == NEW
    # Reused: one answer.
    assert client.post(CONFIRM_API, json={"token": link}).status_code == 400


def test_the_page_code_path_changes_the_address(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    pat = patient(runtime)
    factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    post_form(client, "/account/email/change", "/account/email/change", {"login": NEW})
    code = _code(mailbox.last_to(runtime, NEW))
    done = post_form(
        client, "/account/email/change?sent=1", "/account/email/change/verify", {"code": code}
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/account?done=email"
    assert "Your email address was changed" in client.get("/account?done=email").text
    assert _login(runtime, pat.account_id) == NEW


def test_a_taken_address_answers_the_same_and_its_owner_is_told(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    other = patient(runtime, login=NEW)
    pat = patient(runtime, login="pat2@example.org")
    token = factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    asked = client.post(CHANGE_API, json={"login": NEW.upper()}, headers=bearer(token))
    assert asked.status_code == 202
    assert asked.json() == {"next_step": "verify_email"}
    (notice,) = mailbox.to(runtime, NEW)
    assert notice.subject == "Someone tried to use your email address"
    assert _CODE.search(notice.text) is None
    assert _login(runtime, other.account_id) == NEW
    assert _login(runtime, pat.account_id) == pat.login


def test_a_code_from_another_session_is_refused(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    pat = patient(runtime)
    token = factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    client.post(CHANGE_API, json={"login": NEW}, headers=bearer(token))
    code = _code(mailbox.last_to(runtime, NEW))
    elsewhere = factories.session(runtime, pat.account_id, level=2)
    stolen = client.post(VERIFY_API, json={"code": code}, headers=bearer(elsewhere))
    assert stolen.status_code == 400
    intruder = patient(runtime, login="mallory@example.org")
    foreign = factories.session(runtime, intruder.account_id, level=2)
    assert client.post(VERIFY_API, json={"code": code}, headers=bearer(foreign)).status_code == 400
    assert _login(runtime, pat.account_id) == pat.login
    # Still good where it was asked for.
    assert client.post(VERIFY_API, json={"code": code}, headers=bearer(token)).status_code == 200


def test_expired_and_truncated_change_links_are_refused(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    pat = patient(runtime)
    token = factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    client.post(CHANGE_API, json={"login": NEW}, headers=bearer(token))
    link = _token(_CONFIRM, mailbox.last_to(runtime, NEW))
    assert client.post(CONFIRM_API, json={"token": link[:-4]}).status_code == 400
    # Not a link for another page either: the sign-up confirmation does not take it.
    assert client.post("/api/v1/email/confirm", json={"token": link}).status_code == 400
    with transaction(runtime.sessions) as db:
        db.execute(update(EmailVerification).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert client.post(CONFIRM_API, json={"token": link}).status_code == 400
    assert _login(runtime, pat.account_id) == pat.login


def test_undo_within_7_days_restores_the_address_ends_everything_and_sets_a_new_password(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    pat = patient(runtime)
    mine = factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    registered, tokens = grant(client, runtime)
    client.post(CHANGE_API, json={"login": NEW}, headers=bearer(mine))
    code = _code(mailbox.last_to(runtime, NEW))
    assert client.post(VERIFY_API, json={"code": code}, headers=bearer(mine)).status_code == 200
    undo = _token(_UNDO, mailbox.last_to(runtime, pat.login))
    browser = TestClient(client.app)  # any browser, nobody signed in
    shown = browser.get(f"/email/undo?token={undo}")
    assert shown.status_code == 200
    assert shown.headers["referrer-policy"] == "same-origin"
    assert _login(runtime, pat.account_id) == NEW  # nothing happens without the password
    weak = browser.post(
        "/email/undo",
        data={"token": undo, "new_password": "short", "csrf_token": factories.csrf(shown.text)},
    )
    assert weak.status_code == 400
    assert _login(runtime, pat.account_id) == NEW
    done = browser.post(
        "/email/undo",
        data={
            "token": undo,
            "new_password": NEW_PASSWORD,
            "csrf_token": factories.csrf(shown.text),
        },
    )
    assert done.status_code == 200, done.text
    assert "Your email address is back" in done.text
    assert _login(runtime, pat.account_id) == pat.login
    assert _login_row(runtime, pat.account_id).verified_at is not None
    # Every session and every app's grant ended; the old password is no more.
    assert client.get("/api/v1/sessions", headers=bearer(mine)).status_code == 401
    assert not refreshes(client, registered, tokens["refresh_token"])
    with runtime.sessions() as db:
        credential = db.get(PasswordCredential, pat.account_id)
        assert credential is not None
        assert password.verify(runtime.settings, credential.hash, NEW_PASSWORD).ok
    assert not _signs_in(client, pat.login, PASSWORD)
    assert _signs_in(client, pat.login, NEW_PASSWORD)
    assert not _signs_in(client, NEW, NEW_PASSWORD)
    assert mailbox.last_to(runtime, pat.login).subject == "The change of email address was undone"
    assert mailbox.last_to(runtime, NEW).subject == "The change of email address was undone"
    assert "identity.email.change.undo" in _actions(runtime)
    # Reused: refused.
    reused = client.post(UNDO_API, json={"token": undo, "new_password": NEW_PASSWORD + "!"})
    assert reused.status_code == 400


def test_undo_after_7_days_is_refused(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    account_id, _ = _changed_by_code(client, runtime, mailbox)
    undo = _token(_UNDO, mailbox.last_to(runtime, "pat@example.org"))
    with transaction(runtime.sessions) as db:
        db.execute(update(EmailChange).values(undo_until=utcnow() - timedelta(seconds=1)))
    assert client.get(f"/email/undo?token={undo}").status_code == 400
    late = client.post(UNDO_API, json={"token": undo, "new_password": NEW_PASSWORD})
    assert late.status_code == 400
    assert _login(runtime, account_id) == NEW


def test_truncated_and_foreign_undo_tokens_are_refused(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    account_id, _ = _changed_by_code(client, runtime, mailbox)
    undo = _token(_UNDO, mailbox.last_to(runtime, "pat@example.org"))
    for token in (undo[:-1], undo[:20], "x" * 43, ""):
        body = {"token": token or "x", "new_password": NEW_PASSWORD}
        assert client.post(UNDO_API, json=body).status_code == 400
    assert _login(runtime, account_id) == NEW


def test_undo_is_refused_when_the_old_address_now_belongs_to_another_account(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    account_id, _ = _changed_by_code(client, runtime, mailbox)
    undo = _token(_UNDO, mailbox.last_to(runtime, "pat@example.org"))
    patient(runtime, login="pat@example.org")  # someone signed up with the freed address
    refused = client.post(UNDO_API, json={"token": undo, "new_password": NEW_PASSWORD})
    assert refused.status_code == 409
    assert "belongs to another account" in refused.json()["detail"]
    assert _login(runtime, account_id) == NEW


def test_reset_to_the_new_address_within_7_days_sends_nothing(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    account_id, _ = _changed_by_code(client, runtime, mailbox)
    before = len(mailbox.to(runtime, NEW))
    asked = client.post("/api/v1/password/forgot", json={"login": NEW})
    assert asked.status_code == 202
    assert len(mailbox.to(runtime, NEW)) == before
    assert "identity.password.forgot.email_changed" in _actions(runtime)
    # After the 7 days, a reset link goes out again.
    with transaction(runtime.sessions) as db:
        db.execute(
            update(LoginIdentifier)
            .where(LoginIdentifier.account_id == account_id)
            .values(changed_at=utcnow() - timedelta(days=7, seconds=1))
        )
    client.post("/api/v1/password/forgot", json={"login": NEW})
    assert mailbox.last_to(runtime, NEW).subject != "Your new email address is confirmed"


@pytest.mark.parametrize(
    "typed",
    [
        "new@example.net\r\nBcc: victim@example.org",
        "new@example.net\nSubject: hi",
        "a@example.net, b@example.net",
        "not-an-address",
    ],
)
def test_header_injection_in_the_new_address_is_refused(
    client: TestClient, runtime: Runtime, mailbox: Mailbox, typed: str
) -> None:
    pat = patient(runtime)
    token = factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    refused = client.post(CHANGE_API, json={"login": typed}, headers=bearer(token))
    assert refused.status_code == 400
    assert mailbox.collect(runtime) == []


def test_unicode_and_mixed_case_addresses_are_normalised(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    pat = patient(runtime)
    token = factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    typed = "  Zoë.Ñandú@EXAMPLE.net "
    normalised = accounts.normalise_login(typed)
    asked = client.post(CHANGE_API, json={"login": typed}, headers=bearer(token))
    assert asked.status_code == 202
    code = _code(mailbox.last_to(runtime, normalised))
    assert client.post(VERIFY_API, json={"code": code}, headers=bearer(token)).status_code == 200
    assert _login(runtime, pat.account_id) == normalised
    # The same address in other case is the same account's: "already yours".
    same = client.post(CHANGE_API, json={"login": typed.upper()}, headers=bearer(token))
    assert same.status_code == 400


def test_undo_of_an_earlier_change_voids_the_undo_links_of_later_ones(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    # An intruder changes the address twice; the second undo link goes to their own
    # first address. Once the owner undoes the first change, that link is dead.
    account_id, token = _changed_by_code(client, runtime, mailbox)
    owners_undo = _token(_UNDO, mailbox.last_to(runtime, "pat@example.org"))
    client.post(CHANGE_API, json={"login": "third@example.com"}, headers=bearer(token))
    code = _code(mailbox.last_to(runtime, "third@example.com"))
    assert client.post(VERIFY_API, json={"code": code}, headers=bearer(token)).status_code == 200
    intruders_undo = _token(_UNDO, mailbox.last_to(runtime, NEW))
    body = {"token": owners_undo, "new_password": NEW_PASSWORD}
    assert client.post(UNDO_API, json=body).status_code == 204
    assert _login(runtime, account_id) == "pat@example.org"
    back = client.post(UNDO_API, json={"token": intruders_undo, "new_password": "x" * 20 + "!"})
    assert back.status_code == 400
    assert _login(runtime, account_id) == "pat@example.org"


def test_asking_for_changes_is_throttled_per_account(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    pat = patient(runtime)
    token = factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    for number in range(6):
        body = {"login": f"new{number}@example.net"}
        assert client.post(CHANGE_API, json=body, headers=bearer(token)).status_code == 202
    refused = client.post(CHANGE_API, json={"login": "new9@example.net"}, headers=bearer(token))
    assert refused.status_code == 429
    assert mailbox.to(runtime, "new9@example.net") == []
    assert "identity.email.change.request" in _actions(runtime)


def test_the_new_address_gets_at_most_its_hourly_emails_and_the_same_answer(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    pat = patient(runtime)
    token = factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    limit = runtime.settings.emails_per_address_per_hour
    for _ in range(limit + 1):
        asked = client.post(CHANGE_API, json={"login": NEW}, headers=bearer(token))
        assert asked.status_code == 202
        assert asked.json() == {"next_step": "verify_email"}
    assert len(mailbox.to(runtime, NEW)) == limit
    # The last code sent still works.
    code = _code(mailbox.last_to(runtime, NEW))
    assert client.post(VERIFY_API, json={"code": code}, headers=bearer(token)).status_code == 200


def test_undo_token_guessing_is_throttled_per_client_address(
    client: TestClient, runtime: Runtime
) -> None:
    body = {"token": "guess", "new_password": NEW_PASSWORD}
    for _ in range(21):
        assert client.post(UNDO_API, json=body).status_code == 400
    assert client.post(UNDO_API, json=body).status_code == 429
    assert client.get("/email/undo?token=guess").status_code == 429


def test_a_password_reset_ends_a_pending_change_of_address(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    # An intruder with a stepped-up session asks for their address; the owner resets
    # the password first: the intruder's link and code no longer work.
    pat = patient(runtime)
    token = factories.sign_in(client, runtime, pat.account_id, level=2, stepped_up=True)
    client.post(CHANGE_API, json={"login": NEW}, headers=bearer(token))
    sent = mailbox.last_to(runtime, NEW)
    client.post("/api/v1/password/forgot", json={"login": pat.login})
    reset_link = mailbox.last_to(runtime, pat.login).text
    match = re.search(r"/password/reset\?token=(\S+)", reset_link)
    assert match, reset_link
    body = {"token": match.group(1), "password": NEW_PASSWORD}
    assert client.post("/api/v1/password/reset", json=body).status_code == 204
    assert client.post(CONFIRM_API, json={"token": _token(_CONFIRM, sent)}).status_code == 400
    assert _login(runtime, pat.account_id) == pat.login


def test_undo_also_ends_a_lost_factor_recovery_started_in_the_meantime(
    client: TestClient, runtime: Runtime, mailbox: Mailbox
) -> None:
    # Whoever changed the address may also have asked to replace the second factor; the
    # owner taking the address back ends that too.
    account_id, _ = _changed_by_code(client, runtime, mailbox)
    undo = _token(_UNDO, mailbox.last_to(runtime, "pat@example.org"))
    now = utcnow()
    with transaction(runtime.sessions) as db:
        db.add(
            RecoveryRequest(
                id="rcv_meanwhile",
                account_id=account_id,
                kind="self",
                state="waiting",
                created_at=now,
                proved_at=now,
                wait_until=now + timedelta(hours=24),
            )
        )
    done = client.post(UNDO_API, json={"token": undo, "new_password": NEW_PASSWORD})
    assert done.status_code == 204, done.text
    with runtime.sessions() as db:
        request = db.get(RecoveryRequest, "rcv_meanwhile")
        assert request is not None
        assert (request.state, request.end_reason) == ("cancelled", "email_undone")
