"""Changing the password, confirming it's you, signing out everywhere and deleting the
account, in a real browser (issue 19), on SQLite and PostgreSQL; every page checked with
axe-core."""

from __future__ import annotations

import time

import pyotp
from playwright.sync_api import Page, expect

from tests.browser.harness import check_accessibility
from tests.browser.test_accounts_journey import (
    EMAIL,
    expect_signed_in,
    sign_up,
    wait_for_path,
)
from tests.identity.reset_mail import Mailbox
from tests.live_server import LiveApp

NEW_PASSWORD = "amber violin harbour tulip"


def test_change_password_confirm_it_is_you_and_delete_the_account(
    live_app: LiveApp, page: Page, mailbox: Mailbox
) -> None:
    sign_up(page, live_app, mailbox)
    wait_for_path(page, "/mfa/enroll")
    totp = pyotp.TOTP("".join(page.locator("#secret").inner_text().split()))
    step = totp.timecode(time.time())
    page.get_by_label("Code from the app").fill(totp.generate_otp(step))
    page.get_by_role("button", name="Turn on").click()
    wait_for_path(page, "/mfa/recovery-codes")
    page.get_by_role("button", name="I have saved these codes").click()
    expect_signed_in(page)

    # Just enrolled: stepped up, so the password can change at once.
    page.get_by_role("link", name="Change your password").first.click()
    wait_for_path(page, "/account/password")
    check_accessibility(page)
    page.get_by_label("New password").fill("short")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("alert")).to_be_visible()
    check_accessibility(page)
    page.get_by_label("New password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Change password").click()
    wait_for_path(page, "/account")
    expect(page.get_by_role("status").first).to_contain_text("Your password was changed")

    # "Confirm it's you" asks for the authenticator (or a recovery code), never the
    # password, then goes back to where it was asked from.
    page.goto(f"{live_app.url}/reauth?next=/account/delete")
    check_accessibility(page)
    expect(page.get_by_label("Password")).to_have_count(0)
    page.get_by_label("Code from your authenticator app").fill(totp.generate_otp(step + 1))
    page.get_by_role("button", name="Confirm", exact=True).click()
    wait_for_path(page, "/account/delete")
    check_accessibility(page)
    page.get_by_role("button", name="Delete my account").click()
    expect(page.get_by_role("alert")).to_be_visible()  # the box was not ticked
    page.get_by_label("I understand: delete my account").check()
    page.get_by_role("button", name="Delete my account").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account was deleted")
    check_accessibility(page)

    # The old password no longer signs in: the address is free for a new account.
    page.goto(f"{live_app.url}/signin")
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_label("Password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("alert")).to_be_visible()


def test_sign_out_everywhere_from_the_sessions_page(
    live_app: LiveApp, page: Page, mailbox: Mailbox
) -> None:
    sign_up(page, live_app, mailbox)
    wait_for_path(page, "/mfa/enroll")
    totp = pyotp.TOTP("".join(page.locator("#secret").inner_text().split()))
    page.get_by_label("Code from the app").fill(totp.now())
    page.get_by_role("button", name="Turn on").click()
    wait_for_path(page, "/mfa/recovery-codes")
    page.get_by_role("button", name="I have saved these codes").click()
    expect_signed_in(page)
    page.goto(f"{live_app.url}/account/sessions")
    check_accessibility(page)
    page.get_by_role("button", name="Sign out everywhere").click()
    wait_for_path(page, "/signin")
    page.goto(f"{live_app.url}/account")
    wait_for_path(page, "/signin")
