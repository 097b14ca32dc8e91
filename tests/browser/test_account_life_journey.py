"""An account's life in a real browser (issue 19), on SQLite and PostgreSQL, every e-mail
read from a real SMTP server (aiosmtpd) that carebridge's own SMTP mailer delivered it
to: sign up, the code from the e-mail, the authenticator enrolled, sign out; "Forgot
your password?", the link from the e-mail, a new password; then a sign-in with it asks
for the second factor, and the app's code lets the patient in. Every page checked with
axe-core."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pyotp
from playwright.sync_api import Page, expect

from tests.browser.harness import check_accessibility
from tests.browser.test_accounts_journey import (
    EMAIL,
    PASSWORD,
    expect_signed_in,
    sign_out,
    sign_up,
    wait_for_path,
)
from tests.identity.reset_mail import Sent, SmtpMailbox, reset_token
from tests.live_server import LiveApp

NEW_PASSWORD = "amber quarry violin tundra"


def _received(mailbox: SmtpMailbox, app: LiveApp, subject: str) -> Sent:
    """The e-mail to EMAIL with ``subject``, once the SMTP server received it."""
    deadline = time.monotonic() + 10
    while not (found := [s for s in mailbox.to(app.runtime, EMAIL) if s.subject == subject]):
        assert time.monotonic() < deadline, f"no e-mail {subject!r}"
        time.sleep(0.1)
    (email,) = found
    return email


def test_sign_up_enrol_forget_the_password_reset_it_and_sign_in_with_the_second_factor(
    live_app: LiveApp, page: Page, mailbox: SmtpMailbox
) -> None:
    runtime = live_app.runtime

    # Sign up: the code comes from the e-mail the SMTP server received.
    sign_up(page, live_app, mailbox)
    (confirm,) = mailbox.to(runtime, EMAIL)
    assert confirm.subject == "Confirm your email address"
    wait_for_path(page, "/mfa/enroll")
    check_accessibility(page)

    # The authenticator: the key from the page, its current code.
    totp = pyotp.TOTP("".join(page.locator("#secret").inner_text().split()))
    enrolled_step = totp.timecode(time.time())
    page.get_by_label("Code from the app").fill(totp.generate_otp(enrolled_step))
    page.get_by_role("button", name="Turn on").click()
    wait_for_path(page, "/mfa/recovery-codes")
    check_accessibility(page)
    page.get_by_role("button", name="I have saved these codes").click()
    expect_signed_in(page)
    check_accessibility(page)
    sign_out(page)
    check_accessibility(page)

    # Forgot the password: the link from the e-mail, followed in this browser.
    page.get_by_role("link", name="Forgot your password?").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Reset your password")
    check_accessibility(page)
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_role("button", name="Send me a link").click()
    expect(page.get_by_role("status")).to_contain_text("we have sent it a link")
    check_accessibility(page)
    email = _received(mailbox, live_app, "Reset your password")
    link = next(word for word in email.text.split() if "/password/reset?token=" in word)
    assert reset_token(email) in link
    page.goto(link)
    assert urlsplit(page.url).path == "/password/reset" and not urlsplit(page.url).query
    expect(page.get_by_role("heading", level=1)).to_have_text("Choose a new password")
    check_accessibility(page)
    page.get_by_label("New password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your password was changed")
    check_accessibility(page)
    _received(mailbox, live_app, "Your password was reset")

    # The old password no longer signs in.
    page.goto(f"{live_app.url}/signin")
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("alert")).to_be_visible()
    assert urlsplit(page.url).path == "/signin"
    check_accessibility(page)

    # The new one does, and the second factor is asked for and works.
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_label("Password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    wait_for_path(page, "/mfa/challenge")
    check_accessibility(page)
    page.goto(f"{live_app.url}/account")
    wait_for_path(page, "/mfa/challenge")  # half signed in: the account stays shut
    page.get_by_label("Code from the app").fill(totp.generate_otp(enrolled_step + 1))
    page.get_by_role("button", name="Continue").click()
    expect_signed_in(page)
    check_accessibility(page)

    # Each e-mail arrived once, over SMTP, to the address alone.
    assert [(sent.to, sent.subject) for sent in mailbox.to(runtime, EMAIL)] == [
        (EMAIL, "Confirm your email address"),
        (EMAIL, "A second sign-in step was added to your account"),
        (EMAIL, "Reset your password"),
        (EMAIL, "Your password was reset"),
    ]
    assert len(mailbox.server.messages) == 4
