"""The whole journey (issue 8) in a real browser, on SQLite and PostgreSQL, in demo mode.

1. A patient signs up silently (the code from the e-mail the SMTP backend sent to a
   real SMTP server, aiosmtpd), enrols TOTP, verifies with a demo DOB + SSN last 4, adds
   and verifies a phone number, turns SMS on (voicemail off) with quiet hours.
2. The clinician signs in to the demo provider app through OpenID Connect and writes.
3. The worker's outbox job delivers the notification: the console SMS holds only the
   generic text and a link.
4. The patient opens the link, signs in with the second factor, lands on the thread,
   reads, replies with an attachment.
5. The clinician sees the reply; the audit chain verifies; no log record holds the
   message text, the phone number, the DOB or the SSN digits.
6. A second patient who tries the first one's thread URL or link gets the same generic
   page as a missing thread or an unknown link.
7. The patient writes first, on a topic the team routes to its billing pool; the worker
   delivers the webhook and the demo provider app lists the new patient thread.
8. The clinician, the demo team's admin, invites a staff member from the app; they sign up (the
   code and the invitation from the SMTP server), enrol MFA, accept at /staff/enrol, see
   the billing thread in the app; offboarded, their app token and session stop working.

Screenshots of the main steps go to docs/screenshots/journey-*.png for getting-started.md
(under `make screenshots`; `make test` leaves the tree clean).
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx2
import pyotp
import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from carebridge import audit, wiring, worker
from carebridge.demo import seed
from carebridge.demo.seed import DemoConfig, DemoPatient
from identity import accounts
from messaging import care_teams, roles
from messaging.interfaces import add_topic, configure
from sms import links as sms_links
from tests.browser.harness import check_accessibility, screenshot
from tests.identity.reset_mail import Mailbox, code_in
from tests.live_server import LiveApp
from tests.tokens import mint

PATIENT_EMAIL = "journey.patient@example.org"
SECOND_EMAIL = "second.patient@example.org"
STAFF_EMAIL = "new.front.desk@example.org"
PATIENT_SUBJECT = "A question about my bill"
PATIENT_BODY = "I was charged twice for the visit in March."
ENROL_LINK = re.compile(r"https?://\S+/staff/enrol\?token=[A-Za-z0-9_-]+")
PASSWORD = "plum kettle orbit lantern"
PHONE = "+1 202 555 0142"
PHONE_DIGITS = "2025550142"
SUBJECT = "Your recent visit"
BODY = "Your test results are ready; please book a follow-up about the biopsy."
REPLY = "Thank you, I will book it this week."
LINK = re.compile(r"https?://\S+/l/[A-Za-z0-9_-]{22,}")
REFERENCE = re.compile(r"reference [0-9a-f]{32}")
CODE = re.compile(r"verification code is (\d{6})")
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00"
    b"\x00\x00\x00IEND\xaeB`\x82"
)


def path_of(page: Page) -> str:
    return urlsplit(page.url).path


def wait_for_path(page: Page, path: str) -> None:
    page.wait_for_url(lambda url: urlsplit(url).path == path)


def shot(page: Page, name: str) -> None:
    screenshot(page, f"journey-{name}")


def main_text(page: Page) -> str:
    """The page's main content without its per-request support reference."""
    return REFERENCE.sub("reference …", page.locator("main").inner_text())


def config_of(app: LiveApp) -> DemoConfig:
    config = seed.load_config(app.runtime)
    assert config is not None
    return config


def enrol_totp(page: Page) -> tuple[pyotp.TOTP, int, list[str]]:
    """On the enrolment page: the key typed in, its code; returns the app, the step used
    and the recovery codes."""
    wait_for_path(page, "/mfa/enroll")
    secret = "".join(page.locator("#secret").inner_text().split())
    totp = pyotp.TOTP(secret)
    step = totp.timecode(time.time())
    page.get_by_label("Code from the app").fill(totp.generate_otp(step))
    page.get_by_role("button", name="Turn on").click()
    wait_for_path(page, "/mfa/recovery-codes")
    codes = page.get_by_role("list", name="Recovery codes").get_by_role("listitem")
    recovery = [code.strip() for code in codes.all_inner_texts()]
    page.get_by_role("button", name="I have saved these codes").click()
    return totp, step, recovery


def sign_up(
    page: Page, app: LiveApp, mailbox: Mailbox, email: str, mail_number: int = 1
) -> tuple[pyotp.TOTP, int, list[str]]:
    page.goto(f"{app.url}/signup")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Create a password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    wait_for_path(page, "/email/verify")
    # The code as the person reads it: from the mail the SMTP server received.
    code = code_in(mailbox.wait_for(app.runtime, email, mail_number))
    page.get_by_label("Code from the email").fill(code)
    page.get_by_role("button", name="Continue").click()
    return enrol_totp(page)


def sign_in(page: Page, email: str, recovery_code: str) -> None:
    """On the sign-in page: password, then a recovery code (the app's codes are single
    use per 30-second step; a recovery code keeps the test from waiting for the next)."""
    wait_for_path(page, "/signin")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    wait_for_path(page, "/mfa/challenge")
    page.get_by_role("link", name="Use a recovery code instead").click()
    page.get_by_label("Recovery code").fill(recovery_code)
    page.get_by_role("button", name="Continue").click()


def verify_as(page: Page, app: LiveApp, person: DemoPatient) -> None:
    page.goto(f"{app.url}/verify")
    year, month, day = person.dob.split("-")
    page.get_by_label("Day").fill(day)
    page.get_by_label("Month").fill(month)
    page.get_by_label("Year").fill(year)
    page.get_by_label("Last 4 digits of your Social Security number").fill(person.ssn4)
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("status")).to_contain_text("Your identity is verified")


def console_lines(capfd: pytest.CaptureFixture[str], pattern: re.Pattern[str]) -> list[str]:
    out = capfd.readouterr().out
    return [line for line in out.splitlines() if pattern.search(line)]


def set_notifications(page: Page, app: LiveApp, capfd: pytest.CaptureFixture[str]) -> None:
    page.goto(f"{app.url}/account/notifications")
    check_accessibility(page)
    capfd.readouterr()
    page.get_by_label("Mobile number").fill(PHONE)
    page.get_by_role("button", name="Add number").click()
    expect(page.get_by_label("Code from the text message")).to_be_visible()
    # The worker sends the code; the console backend prints its text message.
    run_outbox(app)
    codes = [CODE.search(line).group(1) for line in console_lines(capfd, CODE)]  # type: ignore[union-attr]
    assert len(codes) == 1, "one verification code should have been printed"
    page.get_by_label("Code from the text message").fill(codes[-1])
    page.get_by_role("button", name="Verify number").click()
    expect(page.get_by_role("status")).to_have_text("Your phone number is verified.")
    page.get_by_label("Text messages").check()
    expect(page.get_by_label("Leave a voicemail if I don't answer")).not_to_be_checked()
    # Quiet hours that do not hold now, so the notification goes at once.
    now = datetime.now(UTC)
    page.get_by_label("Your time zone").select_option("UTC")
    page.get_by_label("From", exact=True).fill((now + timedelta(hours=2)).strftime("%H:%M"))
    page.get_by_label("Until", exact=True).fill((now + timedelta(hours=3)).strftime("%H:%M"))
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_be_visible()
    expect(page.get_by_label("Text messages")).to_be_checked()
    shot(page, "3-notifications")


def clinician_writes(page: Page, app: LiveApp, patient: DemoPatient) -> str:
    config = config_of(app)
    page.goto(config.app_url)
    check_accessibility(page)
    page.get_by_role("link", name="Sign in with carebridge").click()
    wait_for_path(page, "/signin")
    page.get_by_label("Email address").fill(config.clinician_login)
    page.get_by_label("Password").fill(seed.CLINICIAN_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    enrol_totp(page)  # first sign-in: MFA is required of staff too
    # Consent for the demo provider app, then back to it.
    expect(page.get_by_role("heading", level=1)).to_contain_text("Allow")
    check_accessibility(page)
    shot(page, "4-consent")
    page.get_by_role("button", name="Allow", exact=True).click()
    wait_for_path(page, "/demo/provider/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Care team threads")
    page.get_by_label("Patient (this app's demo patient list)").select_option(patient.patient_id)
    page.get_by_label("Subject").fill(SUBJECT)
    page.get_by_label("Message").fill(BODY)
    page.get_by_role("button", name="Send securely").click()
    page.wait_for_url(re.compile(r"/demo/provider/threads/th_"))
    expect(page.get_by_text(BODY)).to_be_visible()
    shot(page, "5-provider-app")
    return path_of(page).rsplit("/", 1)[1]


def run_outbox(app: LiveApp) -> None:
    for job in (wiring.OUTBOX,):
        assert worker.run_once(app.runtime, job)


def deliver(app: LiveApp, capfd: pytest.CaptureFixture[str]) -> str:
    capfd.readouterr()
    run_outbox(app)
    lines = console_lines(capfd, LINK)
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.timeout(300)
def test_the_whole_journey(
    demo_app: LiveApp,
    browser: Browser,
    mailbox: Mailbox,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    app = demo_app
    config = config_of(app)
    person, other = config.patients[0], config.patients[1]

    patient_context = browser.new_context(viewport={"width": 1024, "height": 768})
    patient = patient_context.new_page()
    # 1. Sign up silently: nothing printed (no SMS, no call) until a number is added.
    capfd.readouterr()
    _, _, recovery = sign_up(patient, app, mailbox, PATIENT_EMAIL)
    assert capfd.readouterr().out == ""
    verify_as(patient, app, person)
    shot(patient, "2-verified")
    set_notifications(patient, app, capfd)

    # 2. The clinician, in another browser, through the demo provider app.
    clinician = browser.new_context(viewport={"width": 1024, "height": 768}).new_page()
    thread_id = clinician_writes(clinician, app, person)

    # 3. The notification: generic text and a link, nothing of the person or the message.
    sms = deliver(app, capfd)
    link = LINK.search(sms).group(0)  # type: ignore[union-attr]
    for secret in (person.name, person.last_name, SUBJECT, BODY, "biopsy", "Demo Care Team"):
        assert secret not in sms
    assert "new secure message" in sms

    # 4. The link, in a browser not signed in: sign in first, then the thread.
    reader = browser.new_context(viewport={"width": 1024, "height": 768}).new_page()
    reader.goto(link)
    wait_for_path(reader, "/signin")
    assert "/l/" not in reader.url  # the token left the address bar
    sign_in(reader, PATIENT_EMAIL, recovery[0])
    wait_for_path(reader, f"/messages/{thread_id}")
    expect(reader.get_by_text(BODY)).to_be_visible()
    check_accessibility(reader)
    shot(reader, "6-thread")
    reader.get_by_label("Your message").fill(REPLY)
    reader.get_by_label("Attach a file (optional)").set_input_files(
        {"name": "insurance-card.png", "mimeType": "image/png", "buffer": PNG}
    )
    reader.get_by_role("button", name="Send").click()
    expect(reader.get_by_text(REPLY)).to_be_visible()
    expect(reader.get_by_role("link", name="insurance-card.png")).to_be_visible()

    # 5. The clinician sees the reply.
    clinician.reload()
    expect(clinician.get_by_text(REPLY)).to_be_visible()
    expect(clinician.get_by_text("insurance-card.png", exact=False)).to_be_visible()
    with app.runtime.sessions() as db:
        assert audit.verify(db).intact
        actions = set(db.scalars(select(audit.AuditRecord.action)))
    steps = {
        "identity.signup",
        "identity.mfa.totp.confirm",
        "identity.verify",
        "sms.contact.verify",
        "sms.preferences.update",
        "identity.oidc.consent.grant",
        "messaging.thread.create",
        "sms.notification.send",
        "identity.mfa.challenge.recovery",
        "messaging.thread.read",
        "messaging.attachment.upload",
    }
    assert steps <= actions, sorted(steps - actions)
    # Every log record's message and string fields (numbers such as timings are not text
    # anyone wrote); values must not appear as whole tokens.
    logged = "\n".join(
        " ".join([record.getMessage(), *(v for v in vars(record).values() if isinstance(v, str))])
        for record in caplog.records
    )
    for secret in (BODY, REPLY, PHONE_DIGITS, person.dob, person.ssn4, "biopsy"):
        assert not re.search(rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])", logged), secret

    # 6. A second patient: the first one's thread and link look like nothing at all.
    intruder_context = browser.new_context(viewport={"width": 1024, "height": 768})
    intruder = intruder_context.new_page()
    sign_up(intruder, app, mailbox, SECOND_EMAIL)
    verify_as(intruder, app, other)
    missing = intruder.goto(f"{app.url}/messages/th_{'x' * 22}")
    missing_text = main_text(intruder)
    theirs = intruder.goto(f"{app.url}/messages/{thread_id}")
    assert missing is not None and theirs is not None
    assert theirs.status == missing.status == 404
    assert main_text(intruder) == missing_text
    assert BODY not in intruder.content()
    unknown = intruder.goto(f"{app.url}/l/{'A' * 30}")
    unknown_text = main_text(intruder)
    used = intruder.goto(link)
    assert unknown is not None and used is not None
    assert main_text(intruder) == unknown_text
    assert used.status == unknown.status
    assert BODY not in intruder.content()

    patient_thread = patient_writes_first(reader, clinician, app)
    staff_member_joins_and_leaves(browser, clinician, app, mailbox, patient_thread)


def patient_writes_first(reader: Page, clinician: Page, app: LiveApp) -> str:
    """7. The team takes billing questions, routed to a billing pool worked by its front
    desk; the patient writes; the demo app hears of it by webhook and the clinician, the
    demo team's admin (a role that sees every pool), sees the thread."""
    config = config_of(app)
    team = config.care_team_id
    configure(app.runtime, team, actor="operator", patients_may_start=True)
    pool = roles.add_pool(app.runtime, team, "billing", roles=["front desk"], actor="operator")
    add_topic(app.runtime, team, "Billing question", actor="operator", pool_id=pool)
    reader.goto(f"{app.url}/messages/new")
    reader.get_by_label("Care team and topic").select_option(label="Billing question")
    reader.get_by_label("Subject").fill(PATIENT_SUBJECT)
    reader.get_by_label("Your message").fill(PATIENT_BODY)
    reader.get_by_role("button", name="Send").click()
    reader.wait_for_url(re.compile(r"/messages/th_"))
    thread_id = path_of(reader).rsplit("/", 1)[1]
    expect(reader.get_by_text(PATIENT_BODY)).to_be_visible()
    # The worker delivers the webhook to the demo app's receiver over HTTP.
    run_outbox(app)
    clinician.goto(config.app_url)
    events = clinician.get_by_role("list").filter(has=clinician.locator(f"a[href$='{thread_id}']"))
    expect(events.get_by_text("New patient thread")).to_be_visible()
    expect(clinician.get_by_role("link", name=PATIENT_SUBJECT)).to_be_visible()
    check_accessibility(clinician)
    shot(clinician, "7-provider-webhook")
    return thread_id


def staff_member_joins_and_leaves(
    browser: Browser, clinician: Page, app: LiveApp, mailbox: Mailbox, thread_id: str
) -> None:
    """8. Invited by a team admin, enrolled, routed to by topic, offboarded."""
    config = config_of(app)
    team = config.care_team_id
    clinician.get_by_label("Their e-mail address").fill(STAFF_EMAIL)
    clinician.get_by_label("Role").select_option("front desk")
    clinician.get_by_role("button", name="Send the invitation").click()
    expect(clinician.get_by_role("status")).to_contain_text("invitation is on its way")
    invitation = mailbox.wait_for(app.runtime, STAFF_EMAIL, 1)
    link = ENROL_LINK.search(invitation.text).group(0)  # type: ignore[union-attr]
    for secret in (PATIENT_SUBJECT, PATIENT_BODY, BODY):
        assert secret not in invitation.text

    staff = browser.new_context(viewport={"width": 1024, "height": 768}).new_page()
    sign_up(staff, app, mailbox, STAFF_EMAIL, mail_number=2)
    staff.goto(link)
    expect(staff.get_by_text("as front desk")).to_be_visible()
    check_accessibility(staff)
    shot(staff, "8-staff-enrol")
    staff.get_by_role("button", name="Accept the invitation").click()
    expect(staff.get_by_text("You are now a staff member of Demo Care Team")).to_be_visible()
    staff.goto(config.app_url)
    staff.get_by_role("link", name="Sign in with carebridge").click()
    expect(staff.get_by_role("heading", level=1)).to_contain_text("Allow")
    staff.get_by_role("button", name="Allow", exact=True).click()
    wait_for_path(staff, "/demo/provider/")
    # Routed by topic to the billing pool their role works.
    expect(staff.get_by_role("link", name=PATIENT_SUBJECT)).to_be_visible()
    staff.get_by_role("link", name=PATIENT_SUBJECT).click()
    expect(staff.get_by_text(PATIENT_BODY)).to_be_visible()
    assert path_of(staff).endswith(thread_id)

    # Offboarded (`carebridge staff offboard`): the app's token and the session end now.
    with app.runtime.sessions() as db:
        member = accounts.find_by_login(db, app.runtime.keyring, STAFF_EMAIL)
    assert member is not None
    care_teams.remove_staff(app.runtime, team, member.account_id, actor="operator")
    staff.goto(config.app_url)
    expect(staff.get_by_role("link", name="Sign in with carebridge")).to_be_visible()
    assert PATIENT_SUBJECT not in staff.content()
    staff.goto(link)
    wait_for_path(staff, "/signin")


def care_team_api(app: LiveApp) -> httpx2.Client:
    """The demo provider app's back end, with a client-credentials token for its team."""
    config = config_of(app)
    token = mint(
        app.runtime,
        sub=config.client_id,
        client_id=config.client_id,
        scope="messaging.read messaging.write",
    )
    return httpx2.Client(base_url=app.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def open_thread(api: httpx2.Client, patient: DemoPatient) -> str:
    answer = api.post(
        "/api/v1/messaging/threads",
        json={"patient_id": patient.patient_id, "subject": SUBJECT, "body": BODY},
    )
    assert answer.status_code == 201, answer.text
    thread_id: str = answer.json()["thread"]["id"]
    return thread_id


def message_count(api: httpx2.Client, thread_id: str) -> int:
    answer = api.get(f"/api/v1/messaging/threads/{thread_id}")
    assert answer.status_code == 200, answer.text
    return len(answer.json()["messages"])


@pytest.mark.timeout(300)
def test_each_step_out_of_order_gets_a_clear_page_and_changes_nothing(
    demo_app: LiveApp, browser: Browser, mailbox: Mailbox
) -> None:
    app = demo_app
    config = config_of(app)
    person = config.patients[0]
    api = care_team_api(app)
    thread_id = open_thread(api, person)
    with app.runtime.sessions() as db:
        link = sms_links.create(
            db,
            app.runtime,
            patient_id=person.patient_id,
            thread_id=thread_id,
            notification_id=None,
            now=datetime.now(UTC),
        )
        db.commit()

    # The link before verifying: the generic page, and the account is still no patient.
    patient = browser.new_context(viewport={"width": 1024, "height": 768}).new_page()
    sign_up(patient, app, mailbox, PATIENT_EMAIL)
    response = patient.goto(link)
    assert response is not None and response.status == 404
    expect(patient.get_by_role("heading", level=1)).to_be_visible()
    assert BODY not in patient.content() and SUBJECT not in patient.content()
    check_accessibility(patient)
    patient.goto(f"{app.url}/messages")
    wait_for_path(patient, "/verify")  # not a patient yet: verify first

    # Verified now, the thread open in the page; the care team closes it; the reply is
    # refused with a clear message, and the thread keeps its one message.
    verify_as(patient, app, person)
    patient.goto(f"{app.url}/messages/{thread_id}")
    expect(patient.get_by_text(BODY)).to_be_visible()
    assert api.post(f"/api/v1/messaging/threads/{thread_id}/close").status_code in (200, 204)
    patient.get_by_label("Your message").fill(REPLY)
    patient.get_by_role("button", name="Send").click()
    expect(patient.get_by_role("alert")).to_contain_text("closed")
    assert message_count(api, thread_id) == 1

    # Messaging before consent: the clinician says no; the app gets access_denied and
    # no token, and nothing was written for the patient.
    clinician = browser.new_context(viewport={"width": 1024, "height": 768}).new_page()
    clinician.goto(config.app_url)
    clinician.get_by_role("link", name="Sign in with carebridge").click()
    wait_for_path(clinician, "/signin")
    clinician.get_by_label("Email address").fill(config.clinician_login)
    clinician.get_by_label("Password").fill(seed.CLINICIAN_PASSWORD)
    clinician.get_by_role("button", name="Sign in", exact=True).click()
    enrol_totp(clinician)
    clinician.get_by_role("button", name="Don't allow").click()
    wait_for_path(clinician, "/demo/provider/callback")
    expect(clinician.get_by_role("alert")).to_contain_text("access_denied")
    clinician.goto(config.app_url)
    expect(clinician.get_by_role("link", name="Sign in with carebridge")).to_be_visible()
    threads = api.get("/api/v1/messaging/threads").json()["threads"]
    assert [thread["id"] for thread in threads] == [thread_id]
    api.close()
