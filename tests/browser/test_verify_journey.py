"""Identity verification in a real browser (issue 4), on SQLite and PostgreSQL: the DOB +
SSN last 4 page with its tie-breaker step and its step-up to last name and ZIP (issue 17),
and activation codes, each going back to the page that sent the patient (``next``). Every
page is checked with axe-core.

The account and its finished sign-in come straight from the database (the sign-in
journey has its own test): the browser gets the session cookie.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode, urlsplit

from playwright.sync_api import Page, expect

from identity import sessions
from identity.flows import activate, verify
from identity.roster import staff
from tests.browser.harness import check_accessibility
from tests.identity import factories
from tests.identity.test_verify import TWIN_A, ZEB, load_roster, patient_of
from tests.live_server import LiveApp

NEXT = "/account/sessions"


def signed_in(page: Page, app: LiveApp) -> str:
    """A fresh account past its second factor, signed in in this browser context."""
    account_id = factories.account(app.runtime)
    token = factories.session(app.runtime, account_id, level=sessions.SECOND_FACTOR)
    page.context.clear_cookies()
    page.context.add_cookies(
        [{"name": sessions.cookie_name(app.runtime), "value": token, "url": app.url}]
    )
    return account_id


def linked_patient(app: LiveApp, account_id: str) -> str | None:
    from identity.patients import patient_id_of  # noqa: PLC0415

    with app.runtime.sessions() as db:
        return patient_id_of(db, account_id)


def enter_dob_and_ssn(page: Page, row: list[str]) -> None:
    year, month, day = row[2].split("-")
    page.get_by_label("Day").fill(day)
    page.get_by_label("Month").fill(month)
    page.get_by_label("Year").fill(year)
    page.get_by_label("Last 4 digits of your Social Security number").fill(row[3])


def test_a_patient_verifies_through_the_tiebreaker_and_goes_back_to_next(
    live_app: LiveApp, page: Page, tmp_path: Path
) -> None:
    load_roster(live_app.runtime, tmp_path)
    account_id = signed_in(page, live_app)
    page.goto(f"{live_app.url}/verify?{urlencode({'next': NEXT})}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Verify your identity")
    check_accessibility(page)

    # A malformed date first: the error is tied to its field, nothing is kept of the SSN.
    enter_dob_and_ssn(page, TWIN_A)
    page.get_by_label("Day").fill("31")
    page.get_by_label("Month").fill("2")
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert")).to_contain_text(verify.REAL_DOB)
    check_accessibility(page)
    expect(page.get_by_label("Last 4 digits of your Social Security number")).to_have_value("")

    # Two people share this DOB and SSN last 4: the page asks for the last name.
    enter_dob_and_ssn(page, TWIN_A)
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert")).to_contain_text(verify.NEED_MORE)
    expect(page.get_by_label("Last name")).to_be_visible()
    check_accessibility(page)
    assert TWIN_A[3] not in page.content()

    # With the keyboard alone: the SSN again (never refilled), then the last name.
    page.get_by_label("Last 4 digits of your Social Security number").focus()
    page.keyboard.type(TWIN_A[3])
    page.keyboard.press("Tab")
    expect(page.get_by_label("Last name")).to_be_focused()
    page.keyboard.type(TWIN_A[1])
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: urlsplit(url).path == NEXT)
    check_accessibility(page)
    assert linked_patient(live_app, account_id) == patient_of(live_app.runtime, TWIN_A)

    # Sent to /verify again (another tab, say): straight on to where it was going.
    page.goto(f"{live_app.url}/verify?{urlencode({'next': NEXT})}")
    page.wait_for_url(lambda url: urlsplit(url).path == NEXT)


def test_a_patient_whose_birth_date_is_under_attack_verifies_with_last_name_and_zip(
    live_app: LiveApp, page: Page, tmp_path: Path
) -> None:
    load_roster(live_app.runtime, tmp_path)
    # Strangers failed three times on ZEB's birth date: it now asks for more, refuses nobody.
    for n in range(live_app.runtime.settings.verify_step_up_after):
        details = verify.VerifyDetails.model_validate({"dob": ZEB[2], "ssn4": f"{n:04d}"})
        account = factories.account(live_app.runtime)
        verify.verify(live_app.runtime, account, details, client_host=f"198.51.100.{n + 1}")
    account_id = signed_in(page, live_app)
    page.goto(f"{live_app.url}/verify?{urlencode({'next': NEXT})}")
    enter_dob_and_ssn(page, ZEB)
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert")).to_contain_text(verify.MORE_PROOF)
    expect(page.get_by_label("Last name")).to_be_visible()
    expect(page.get_by_label("ZIP code")).to_be_visible()
    expect(page.get_by_label("Year")).to_have_value("1961")  # kept; the SSN is not
    expect(page.get_by_label("Last 4 digits of your Social Security number")).to_have_value("")
    check_accessibility(page)

    page.get_by_label("Last 4 digits of your Social Security number").focus()
    page.keyboard.type(ZEB[3])
    page.keyboard.press("Tab")
    expect(page.get_by_label("Last name")).to_be_focused()
    page.keyboard.type(ZEB[1])
    page.keyboard.press("Tab")
    expect(page.get_by_label("ZIP code")).to_be_focused()
    page.keyboard.type(ZEB[4])
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: urlsplit(url).path == NEXT)
    assert linked_patient(live_app, account_id) == patient_of(live_app.runtime, ZEB)


def test_a_patient_redeems_an_activation_code_and_goes_back_to_next(
    live_app: LiveApp, page: Page, tmp_path: Path
) -> None:
    load_roster(live_app.runtime, tmp_path)
    patient = patient_of(live_app.runtime, ZEB)
    code = staff.issue_code(live_app.runtime, patient, reason="front desk").code
    account_id = signed_in(page, live_app)

    # From the verify page, the way a patient with a code finds it.
    page.goto(f"{live_app.url}/verify?{urlencode({'next': NEXT})}")
    page.get_by_role("link", name="Use your activation code instead").click()
    page.wait_for_url(lambda url: urlsplit(url).path == "/activate")
    expect(page.get_by_role("heading", level=1)).to_have_text("Activate your patient record")
    check_accessibility(page)

    page.get_by_label("Activation code").fill("AAAA-BBBB-CCCC")
    page.get_by_label("Date of birth").fill(ZEB[2])
    page.get_by_role("button", name="Activate").click()
    expect(page.get_by_role("alert")).to_contain_text(activate.FAILED)
    check_accessibility(page)
    assert linked_patient(live_app, account_id) is None

    page.get_by_label("Activation code").fill(code.lower())  # case and dashes don't matter
    page.get_by_label("Date of birth").fill(ZEB[2])
    page.get_by_role("button", name="Activate").click()
    page.wait_for_url(lambda url: urlsplit(url).path == NEXT)
    assert linked_patient(live_app, account_id) == patient
