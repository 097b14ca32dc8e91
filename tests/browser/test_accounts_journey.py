"""A patient's account, end to end in a real browser (issue 3), on SQLite and PostgreSQL.

Every page the journeys visit is checked with axe-core (serious and critical violations
fail), the sign-in form is completed with the keyboard alone, and the sign-up page is
photographed on a phone-sized viewport for docs/screenshots/.
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

import httpx
import pyotp
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.harness import check_accessibility, screenshot
from tests.identity.reset_mail import Mailbox, code_in
from tests.live_server import LiveApp

EMAIL = "patient@example.org"
PASSWORD = "plum kettle orbit lantern"  # four random words, as the sign-up page suggests
RECOVERY_CODE = re.compile(r"^[A-Z0-9]{5}-[A-Z0-9]{5}$")


def path_of(page: Page) -> str:
    return urlsplit(page.url).path


def wait_for_path(page: Page, path: str) -> None:
    """Wait until the page is at ``path`` (whatever its query string)."""
    page.wait_for_url(lambda url: urlsplit(url).path == path)


def sign_up(page: Page, app: LiveApp, mailbox: Mailbox) -> None:
    page.goto(f"{app.url}/signup")
    expect(page.get_by_role("heading", level=1)).to_have_text("Create an account")
    check_accessibility(page)
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_label("Create a password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    # "Check your email": the code from the e-mail the SMTP server received, typed in.
    wait_for_path(page, "/email/verify")
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your email")
    check_accessibility(page)
    code = code_in(mailbox.wait_for(app.runtime, EMAIL, 1))
    page.get_by_label("Code from the email").fill(code)
    page.get_by_role("button", name="Continue").click()


def sign_in_with_password(page: Page, app: LiveApp) -> None:
    if path_of(page) != "/signin":
        page.goto(f"{app.url}/signin")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    check_accessibility(page)
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    wait_for_path(page, "/mfa/challenge")
    check_accessibility(page)


def sign_out(page: Page) -> None:
    page.locator("form[action='/signout']").get_by_role("button", name="Sign out").click()
    wait_for_path(page, "/signin")
    assert urlsplit(page.url).query == "signed_out=1"
    expect(page.get_by_role("status")).to_have_text("You have signed out.")


def expect_signed_in(page: Page) -> None:
    wait_for_path(page, "/account")
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account")


def test_patient_signs_up_enrols_totp_and_signs_in_with_each_second_factor(
    live_app: LiveApp, page: Page, mailbox: Mailbox, capfd: pytest.CaptureFixture[str]
) -> None:
    outside: list[str] = []
    page.on(
        "request",
        lambda request: (
            None
            if request.url.startswith((f"{live_app.url}/", "data:"))
            else outside.append(request.url)
        ),
    )

    # Sign-up, then the e-mailed code, then on to the second factor.
    sign_up(page, live_app, mailbox)
    wait_for_path(page, "/mfa/enroll")
    expect(page.get_by_role("heading", level=1)).to_have_text("Set up two-step verification")
    check_accessibility(page)

    # The authenticator app: the key typed in by hand, its current code entered.
    secret = "".join(page.locator("#secret").inner_text().split())
    totp = pyotp.TOTP(secret)
    enrolled_step = totp.timecode(time.time())
    page.get_by_label("Code from the app").fill(totp.generate_otp(enrolled_step))
    page.get_by_role("button", name="Turn on").click()

    wait_for_path(page, "/mfa/recovery-codes")
    check_accessibility(page)
    codes = page.get_by_role("list", name="Recovery codes").get_by_role("listitem")
    recovery_codes = [code.strip() for code in codes.all_inner_texts()]
    assert len(recovery_codes) == 10
    assert len(set(recovery_codes)) == 10
    assert all(RECOVERY_CODE.match(code) for code in recovery_codes), recovery_codes
    page.get_by_role("button", name="I have saved these codes").click()
    expect_signed_in(page)
    check_accessibility(page)
    page.get_by_role("link", name="Where you're signed in").click()
    wait_for_path(page, "/account/sessions")
    expect(page.get_by_role("cell", name=re.compile(r"\(this session\)"))).to_have_count(1)
    check_accessibility(page)
    page.goto(f"{live_app.url}/account")  # the sign-out button is on the account page
    sign_out(page)

    # Password, then the app's next code (the enrolment used up the current step).
    sign_in_with_password(page, live_app)
    sign_in_step = enrolled_step + 1
    sign_in_code = totp.generate_otp(sign_in_step)
    page.get_by_label("Code from the app").fill(sign_in_code)
    page.get_by_role("button", name="Continue").click()
    expect_signed_in(page)
    sign_out(page)

    # Password, then a recovery code instead of the app.
    sign_in_with_password(page, live_app)
    page.get_by_role("link", name="Use a recovery code instead").click()
    wait_for_path(page, "/mfa/recovery")
    check_accessibility(page)
    page.get_by_label("Recovery code").fill(recovery_codes[0])
    page.get_by_role("button", name="Continue").click()
    expect_signed_in(page)
    sign_out(page)

    # The code that signed in before, again: still inside its window, but used up.
    sign_in_with_password(page, live_app)
    assert abs(totp.timecode(time.time()) - sign_in_step) <= 1, "too slow: the code expired"
    page.get_by_label("Code from the app").fill(sign_in_code)
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("alert")).to_contain_text("That code didn't work")
    assert path_of(page) == "/mfa/challenge"
    assert abs(totp.timecode(time.time()) - sign_in_step) <= 1, "too slow: the code expired"
    expect(page.get_by_label("Code from the app")).to_have_attribute("aria-invalid", "true")
    check_accessibility(page)  # the page with its error summary
    page.goto(f"{live_app.url}/account")
    wait_for_path(page, "/mfa/challenge")  # still only half signed in

    # Nothing went anywhere but carebridge itself, and the app (in this process) printed
    # nothing: no text message or call on the console either.
    assert outside == []
    assert capfd.readouterr().out == ""


def focus_stops(page: Page, count: int) -> list[str]:
    """What Tab focuses, ``count`` presses from the top of the page: ids, or role:name."""
    stops = []
    for _ in range(count):
        page.keyboard.press("Tab")
        stops.append(
            page.evaluate(
                "() => { const e = document.activeElement;"
                " return e.id || `${e.tagName.toLowerCase()}:${e.textContent.trim()}`; }"
            )
        )
    return stops


def enrolled_account(app: LiveApp, mailbox: Mailbox) -> pyotp.TOTP:
    """An account with a confirmed authenticator, made through the JSON API."""
    with httpx.Client(base_url=app.url, timeout=10) as api:
        answer = api.post("/api/v1/signup", json={"login": EMAIL, "password": PASSWORD})
        assert answer.status_code == 202, answer.text
        code = code_in(mailbox.wait_for(app.runtime, EMAIL, 1))
        answer = api.post(
            "/api/v1/email/verify",
            json={"pending_token": answer.json()["pending_token"], "code": code},
        )
        assert answer.status_code == 200, answer.text
        bearer = {"Authorization": f"Bearer {answer.json()['session_token']}"}
        answer = api.post("/api/v1/mfa/totp/enroll", headers=bearer)
        assert answer.status_code == 200, answer.text
        totp = pyotp.TOTP(answer.json()["secret"])
        code = totp.generate_otp(totp.timecode(time.time()))
        answer = api.post("/api/v1/mfa/totp/confirm", headers=bearer, json={"code": code})
        assert answer.status_code == 200, answer.text
    return totp


def test_sign_in_with_the_keyboard_alone(live_app: LiveApp, page: Page, mailbox: Mailbox) -> None:
    totp = enrolled_account(live_app, mailbox)
    page.goto(f"{live_app.url}/signin")
    check_accessibility(page)

    stops = focus_stops(page, 5)
    assert stops == ["a:Skip to content", "a:carebridge", "login", "password", "button:Sign in"]
    # Back to the email field, and through the form typing.
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    page.keyboard.type(EMAIL)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")

    wait_for_path(page, "/mfa/challenge")
    check_accessibility(page)
    stops = focus_stops(page, 4)
    assert stops == ["a:Skip to content", "a:carebridge", "code", "button:Continue"]
    page.keyboard.press("Shift+Tab")
    page.keyboard.type(totp.generate_otp(totp.timecode(time.time()) + 1))
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")

    expect_signed_in(page)


def scroll_width(page: Page) -> int:
    width: int = page.evaluate("() => document.documentElement.scrollWidth")
    return width


def test_sign_up_page_fits_a_phone(live_app: LiveApp, browser: Browser, mailbox: Mailbox) -> None:
    context = browser.new_context(
        viewport={"width": 375, "height": 740}, device_scale_factor=2, is_mobile=True
    )
    try:
        page = context.new_page()
        page.goto(f"{live_app.url}/signup")
        assert scroll_width(page) <= 375, "the sign-up page scrolls sideways on a phone"
        screenshot(page, "signup-phone")
        sign_up(page, live_app, mailbox)  # checks its accessibility at this width too
        # The enrolment page's long key must wrap, not widen the page.
        wait_for_path(page, "/mfa/enroll")
        assert scroll_width(page) <= 375, "the enrolment page scrolls sideways on a phone"
        check_accessibility(page)
    finally:
        context.close()


def test_the_accessibility_check_fails_on_an_inaccessible_page(page: Page) -> None:
    # Guards the guard: a check that silently ran nothing would pass every page above.
    page.set_content(
        "<!doctype html><html lang='en'><title>Broken</title><main><h1>Broken</h1>"
        "<form><input name='login'><button></button></form></main></html>"
    )
    with pytest.raises(pytest.fail.Exception) as failure:
        check_accessibility(page)
    assert "critical label" in str(failure.value)
    assert "critical button-name" in str(failure.value)
