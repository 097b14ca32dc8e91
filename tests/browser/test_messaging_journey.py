"""A patient's secure messages in a real browser (issue 6), on SQLite and PostgreSQL: the
inbox, a thread whose subject, body and attachment name carry HTML and script (shown as
text, never run), a reply with an attachment, and its download. Pages pass axe-core."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from carebridge.db import transaction
from identity import sessions
from messaging import care_teams, threads
from messaging.access import Actor
from messaging.interfaces import add_topic, configure, operator_start
from tests.browser.harness import check_accessibility
from tests.identity import factories
from tests.identity.roster_helpers import import_roster, link
from tests.live_server import LiveApp

XSS = '<script>window.pwned=1;alert(1)</script><img src=x onerror="window.pwned=1">'
FILE_XSS = '<img src=x onerror="window.pwned=1">.pdf'
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def signed_in_patient(app: LiveApp, page: Page, tmp_path: Path) -> str:
    """A verified patient with MFA done, signed in on ``page``; returns the patient ID."""
    runtime = app.runtime
    patient_id = import_roster(runtime, tmp_path)["zeb"]
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    link(runtime, account_id, patient_id)
    token = factories.session(runtime, account_id, level=2)
    page.context.add_cookies(
        [{"name": sessions.cookie_name(runtime), "value": token, "url": app.url}]
    )
    return patient_id


def open_thread(app: LiveApp, patient_id: str) -> str:
    runtime = app.runtime
    team = care_teams.create(runtime, name="Northside clinic", retention_days=30, actor="t")
    actor = Actor("app", "provider-app", team)
    with transaction(runtime.sessions) as db:
        thread, _ = threads.create_thread(
            db,
            runtime.keyring,
            runtime.settings,
            actor,
            patient_id=patient_id,
            subject=f"Results {XSS}",
            body=f"Hello,\nyour results: {XSS}",
        )
    return thread.id


def test_patient_reads_replies_uploads_and_downloads(
    live_app: LiveApp, page: Page, tmp_path: Path
) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    patient_id = signed_in_patient(live_app, page, tmp_path)
    thread_id = open_thread(live_app, patient_id)

    page.goto(f"{live_app.url}/messages")
    expect(page.get_by_role("heading", level=1)).to_have_text("Messages")
    expect(page.get_by_text("You have 1 unread message.")).to_be_visible()
    check_accessibility(page)
    page.get_by_role("link", name=f"Results {XSS}").click()
    page.wait_for_url(f"{live_app.url}/messages/{thread_id}")

    expect(page.get_by_role("heading", level=1)).to_have_text(f"Results {XSS}")
    expect(page.locator(".message-body").first).to_have_text(f"Hello,your results: {XSS}")
    assert page.locator("img[src=x]").count() == 0
    check_accessibility(page)

    page.get_by_label("Your message").fill(f"Thanks! {XSS}")
    page.get_by_label("Attach a file (optional)").set_input_files(
        {"name": FILE_XSS, "mimeType": "application/pdf", "buffer": PDF}
    )
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_have_text("Your message was sent.")
    expect(page.locator(".message-body").last).to_have_text(f"Thanks! {XSS}")
    link = page.locator(".attachments a").last
    name = link.inner_text()
    # Shown as text (browsers send '"' in a multipart file name as %22).
    assert name.startswith("<img src=x onerror=") and name.endswith(".pdf")
    check_accessibility(page)

    with page.expect_download() as info:
        link.click()
    download = info.value
    saved = tmp_path / "downloaded.pdf"
    download.save_as(saved)
    assert saved.read_bytes() == PDF
    assert "/" not in download.suggested_filename

    page.goto(f"{live_app.url}/messages")
    expect(page.get_by_text("You have no unread messages.")).to_be_visible()
    assert dialogs == []
    assert page.evaluate("window.pwned === undefined")


def test_patient_writes_first_to_their_care_team(
    live_app: LiveApp, page: Page, tmp_path: Path
) -> None:
    runtime = live_app.runtime
    patient_id = signed_in_patient(live_app, page, tmp_path)
    team = care_teams.create(runtime, name="Northside clinic", retention_days=30, actor="t")
    configure(
        runtime,
        team,
        actor="t",
        patients_may_start=True,
        auto_reply="We answer within a day. If this is an emergency, call 911.",
    )
    add_topic(runtime, team, "Prescription refill", actor="t")
    operator_start(runtime, team, patient_id, actor="t")

    page.goto(f"{live_app.url}/messages")
    page.get_by_role("link", name="Write to your care team").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New message")
    check_accessibility(page)
    page.get_by_label("Care team and topic").select_option(label="Prescription refill")
    page.get_by_label("Subject").fill("Refill")
    page.get_by_label("Your message").fill(f"My usual one {XSS}")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_have_text("Your message was sent.")
    expect(page.locator(".message-body").first).to_have_text(f"My usual one {XSS}")
    expect(page.locator(".message-body").last).to_contain_text("call 911")
    check_accessibility(page)
    assert page.evaluate("window.pwned === undefined")
