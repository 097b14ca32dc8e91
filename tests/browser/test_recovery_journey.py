"""Lost second factor in a real browser, on SQLite and PostgreSQL: from the second-step
page's link, the e-mailed link followed in the same browser, date of birth and SSN last
4, the wait (shortened by configuration to an hour) started; then someone (the owner, in
another browser) clicks "this wasn't me" from the notice and it stops. Every page checked
with axe-core."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select, update

from carebridge.db import transaction
from carebridge.settings import Settings
from carebridge.utc import utcnow
from identity import accounts
from identity.credentials import password
from identity.models import LoginIdentifier, RecoveryRequest
from tests.browser.harness import check_accessibility
from tests.identity import factories
from tests.identity.reset_mail import Mailbox, Sent, SmtpMailbox
from tests.identity.roster_helpers import ZEB, import_roster, link
from tests.live_server import LiveApp, free_socket, serve

EMAIL = "patient@example.org"
PASSWORD = "plum kettle orbit lantern"


@pytest.fixture
def short_wait_app(tmp_path: Path, database_url: str) -> Iterator[LiveApp]:
    """The live app with CAREBRIDGE_RECOVERY_WAIT_HOURS=1."""
    sock = free_socket()
    settings = Settings(
        issuer=f"http://127.0.0.1:{sock.getsockname()[1]}",
        data_dir=tmp_path / "data",
        database_url=database_url,
        recovery_wait_hours=1,
    )
    with serve(settings, sock) as app:
        yield app


def _received(app: LiveApp, mailbox: Mailbox, count: int) -> Sent:
    deadline = time.monotonic() + 10
    while len(received := mailbox.to(app.runtime, EMAIL)) < count:
        assert time.monotonic() < deadline, "the e-mail did not arrive"
        time.sleep(0.1)
    return received[count - 1]


def _link(sent: Sent, path: str) -> str:
    return next(word for word in sent.text.split() if f"{path}?token=" in word)


def test_lost_authenticator_recovery_is_stopped_by_this_wasnt_me(
    short_wait_app: LiveApp,
    page: Page,
    browser: Browser,
    tmp_path: Path,
    mailbox: SmtpMailbox,
) -> None:
    app = short_wait_app
    runtime = app.runtime
    hashed = password.hash_password(runtime.settings, PASSWORD)
    with transaction(runtime.sessions) as db:
        account_id = accounts.create(db, runtime.keyring, login=EMAIL, password_hash=hashed)
        db.execute(
            update(LoginIdentifier)
            .where(LoginIdentifier.account_id == account_id)
            .values(verified_at=utcnow())
        )
    factories.totp(runtime, account_id)
    link(runtime, account_id, import_roster(runtime, tmp_path)["zeb"])

    page.goto(f"{app.url}/signin")
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_role("link", name="Lost your authenticator and recovery codes?").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Recover your account")
    check_accessibility(page)
    page.get_by_role("button", name="Email me a link").click()
    expect(page.get_by_role("status")).to_contain_text("We sent a link")
    check_accessibility(page)

    page.goto(_link(_received(app, mailbox, 1), "/recovery/link"))
    page.get_by_label("Date of birth").fill(ZEB[2])
    page.get_by_label("Last four digits of your Social Security number").fill(ZEB[3])
    check_accessibility(page)
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("status")).to_contain_text("you can set up a new authenticator")
    check_accessibility(page)

    # The owner reads the notice elsewhere and stops it.
    notice = _received(app, mailbox, 2)
    assert notice.subject == "Your second factor will be replaced"
    owner = browser.new_context(locale="en-GB").new_page()
    owner.goto(_link(notice, "/recovery/cancel"))
    check_accessibility(owner)
    owner.get_by_role("button", name="This wasn't me: stop it").click()
    expect(owner.get_by_role("status")).to_contain_text("was stopped")
    check_accessibility(owner)
    assert _received(app, mailbox, 3).subject == "Account recovery stopped"
    with runtime.sessions() as db:
        assert db.scalars(select(RecoveryRequest.state)).all() == ["cancelled"]

    # The recovering browser was signed in with the password only: it is signed out.
    page.reload()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
