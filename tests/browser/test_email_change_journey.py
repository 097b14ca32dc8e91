"""Changing the e-mail address and undoing it in a real browser (issue 19), on SQLite and
PostgreSQL: the change confirmed from the link e-mailed to the new address, the undo
from the link e-mailed to the old one with a new password, then a sign-in with the old
address, the new password and the second factor; every page checked with axe-core."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from playwright.sync_api import Page, expect
from sqlalchemy import update

from carebridge.db import transaction
from carebridge.utc import utcnow
from identity import accounts
from identity.credentials import password
from identity.models import LoginIdentifier
from tests.browser.harness import check_accessibility
from tests.browser.test_accounts_journey import wait_for_path
from tests.identity import factories
from tests.identity.reset_mail import Mailbox, Sent, SmtpMailbox
from tests.live_server import LiveApp

EMAIL = "patient@example.org"
NEW_EMAIL = "patient.new@example.net"
OLD_PASSWORD = "plum kettle orbit lantern"
NEW_PASSWORD = "amber quarry violin tundra"


def _received(app: LiveApp, mailbox: Mailbox, address: str, count: int) -> Sent:
    """The ``count``-th e-mail to ``address``, once it arrived."""
    deadline = time.monotonic() + 10
    while len(received := mailbox.to(app.runtime, address)) < count:
        assert time.monotonic() < deadline, f"no e-mail number {count} to {address}"
        time.sleep(0.1)
    return received[count - 1]


def _link(sent: Sent, path: str) -> str:
    return next(word for word in sent.text.split() if f"{path}?token=" in word)


def _sign_in(page: Page, app: LiveApp, login: str, secret: str, code: str) -> None:
    page.goto(f"{app.url}/signin")
    page.get_by_label("Email address").fill(login)
    page.get_by_label("Password").fill(secret)
    page.get_by_role("button", name="Sign in", exact=True).click()
    wait_for_path(page, "/mfa/challenge")
    page.get_by_label("Code from the app").fill(code)
    page.get_by_role("button", name="Continue").click()
    wait_for_path(page, "/account")


def test_patient_changes_the_email_then_undoes_it_from_the_old_address(
    live_app: LiveApp, page: Page, mailbox: SmtpMailbox
) -> None:
    runtime = live_app.runtime
    hashed = password.hash_password(runtime.settings, OLD_PASSWORD)
    with transaction(runtime.sessions) as db:
        account_id = accounts.create(db, runtime.keyring, login=EMAIL, password_hash=hashed)
        db.execute(
            update(LoginIdentifier)
            .where(LoginIdentifier.account_id == account_id)
            .values(verified_at=utcnow())
        )
    totp = factories.totp(runtime, account_id)
    step = totp.timecode(time.time())

    # A sign-in's second step is a step-up: the change page opens at once.
    _sign_in(page, live_app, EMAIL, OLD_PASSWORD, totp.generate_otp(step))
    page.get_by_role("link", name="Change your email address").first.click()
    wait_for_path(page, "/account/email/change")
    expect(page.get_by_role("heading", level=1)).to_have_text("Change your email address")
    check_accessibility(page)
    page.get_by_label("New email address").fill("not an address")
    page.get_by_role("button", name="Send a code").click()
    expect(page.get_by_role("alert")).to_be_visible()
    check_accessibility(page)
    page.get_by_label("New email address").fill(NEW_EMAIL)
    page.get_by_role("button", name="Send a code").click()
    expect(page.get_by_label("Code from the email")).to_be_visible()
    check_accessibility(page)

    # Confirmed from the link in the e-mail the new address received.
    confirm = _link(_received(live_app, mailbox, NEW_EMAIL, 1), "/email/change/confirm")
    page.goto(confirm)
    check_accessibility(page)
    page.get_by_role("button", name="Change my email address").click()
    expect(page.get_by_role("status")).to_contain_text("Your email address was changed")
    check_accessibility(page)
    assert _received(live_app, mailbox, NEW_EMAIL, 2).subject == (
        "Your new email address is confirmed"
    )

    # The old address's e-mail undoes it, with a new password, in this browser or any.
    notice = _received(live_app, mailbox, EMAIL, 1)
    assert notice.subject == "Your email address was changed"
    page.goto(_link(notice, "/email/undo"))
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Undo the change of your email address"
    )
    check_accessibility(page)
    page.get_by_label("New password").fill("short")
    page.get_by_role("button", name="Undo the change and set the password").click()
    expect(page.get_by_role("alert")).to_be_visible()
    check_accessibility(page)
    page.get_by_label("New password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Undo the change and set the password").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your email address is back")
    check_accessibility(page)

    # Signed out everywhere; the old address, the new password and the second factor.
    page.goto(f"{live_app.url}/account")
    page.wait_for_url(lambda url: urlsplit(url).path == "/signin")
    _sign_in(page, live_app, EMAIL, NEW_PASSWORD, totp.generate_otp(step + 1))
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account")
