"""Forgot password in a real browser, on SQLite and PostgreSQL: from the sign-in page's
link to a new password, the link read from the e-mail an SMTP server received, every page
checked with axe-core; the reset signs nobody in and the next sign-in asks for the
second factor."""

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
from tests.identity import factories
from tests.identity.reset_mail import Mailbox, Sent, SmtpMailbox
from tests.live_server import LiveApp

EMAIL = "patient@example.org"
OLD_PASSWORD = "plum kettle orbit lantern"
NEW_PASSWORD = "amber quarry violin tundra"


def _received(app: LiveApp, mailbox: Mailbox, count: int) -> Sent:
    """The ``count``-th e-mail to EMAIL, once it arrived (links go out after the answer)."""
    deadline = time.monotonic() + 10
    while len(received := mailbox.to(app.runtime, EMAIL)) < count:
        assert time.monotonic() < deadline, "the e-mail did not arrive"
        time.sleep(0.1)
    return received[count - 1]


def test_patient_resets_a_forgotten_password_from_the_emailed_link(
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
    factories.totp(runtime, account_id)

    page.goto(f"{live_app.url}/signin")
    page.get_by_role("link", name="Forgot your password?").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Reset your password")
    check_accessibility(page)
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_role("button", name="Send me a link").click()
    expect(page.get_by_role("status")).to_contain_text("we have sent it a link")
    check_accessibility(page)

    email = _received(live_app, mailbox, 1)
    link = next(word for word in email.text.split() if "/password/reset?token=" in word)
    page.goto(link)
    # The token left the address bar before the page showed.
    assert urlsplit(page.url).path == "/password/reset" and not urlsplit(page.url).query
    expect(page.get_by_role("heading", level=1)).to_have_text("Choose a new password")
    check_accessibility(page)
    page.get_by_label("New password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your password was changed")
    check_accessibility(page)
    assert _received(live_app, mailbox, 2).subject == "Your password was reset"

    # Not signed in; the new password is asked for, then the second factor.
    page.goto(f"{live_app.url}/account")
    page.wait_for_url(lambda url: urlsplit(url).path == "/signin")
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_label("Password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/mfa/challenge")

    # The link worked once.
    page.goto(link)
    expect(page.get_by_role("heading", level=1)).to_have_text("This link does not work")
    check_accessibility(page)
