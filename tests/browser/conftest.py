"""Real-browser tests: Debian's Chromium, driven by Playwright, against the real app.

- ``live_app``: the app under uvicorn in a background thread on a free loopback port, with
  its issuer on that port and the test's database (every browser test runs on SQLite and
  on PostgreSQL, like the rest of the suite).
- ``mailbox``: where the app's e-mails arrive: the outbox delivered by carebridge's own
  ``SmtpMailer`` to a real SMTP server (aiosmtpd on loopback), read back from the MIME
  messages it received (tests/identity/reset_mail.py ``SmtpMailbox``).
- ``page``: a fresh browser context (no cookies, no storage) from one Chromium per session.
- ``check_accessibility(page)``, in tests/browser/harness.py: axe-core (from
  tests/browser/node_modules: ``npm ci --prefix tests/browser``) over the page;
  violations of impact "serious" or "critical" fail.

Chromium is /usr/bin/chromium from Debian (``apt-get install chromium fonts-dejavu-core``):
``playwright install`` downloads browsers from outside the registries and fails here.
Without Chromium or axe-core the tests skip locally and fail in CI (realparts.require).
A failing test leaves a screenshot of its page in its tmp_path (failure-<n>.png).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from carebridge.demo import seed
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from tests.identity.reset_mail import SmtpMailbox
from tests.live_server import LiveApp, free_socket, serve
from tests.realparts import require
from tests.smtp_server import SmtpServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    # The machine's network is closed: no update checks, sync or QUIC probes.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


# The app


@pytest.fixture
def live_app(tmp_path: Path, database_url: str) -> Iterator[LiveApp]:
    """The real app served by uvicorn on a free loopback port, on the test's database."""
    sock = free_socket()
    settings = Settings(
        issuer=f"http://127.0.0.1:{sock.getsockname()[1]}",
        data_dir=tmp_path / "data",
        database_url=database_url,
    )
    with serve(settings, sock) as app:
        yield app


@pytest.fixture
def demo_app(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Iterator[LiveApp]:
    """The app in demo mode (``serve --demo``): seeded, with the demo provider app and its
    webhook endpoint, its e-mails sent by the SMTP backend to ``smtp_server`` (the
    ``mailbox`` reads them)."""
    sock = free_socket()
    settings = Settings(
        issuer=f"http://127.0.0.1:{sock.getsockname()[1]}",
        data_dir=tmp_path / "data",
        database_url=database_url,
        demo=True,
        # As `serve --demo` sets it: the demo provider app's webhook receiver is on loopback.
        webhook_allow_loopback=True,
        **smtp_server.settings(),
    )
    seeding = Runtime.build(settings)
    try:
        seed.seed(seeding)
    finally:
        seeding.close()
    with serve(settings, sock) as app:
        yield app


@pytest.fixture
def mailbox(smtp_server: SmtpServer) -> SmtpMailbox:
    """The app's e-mails as an SMTP server received them (call ``.to(runtime, address)``:
    it delivers what the outbox holds first)."""
    return SmtpMailbox(smtp_server)


# The browser


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    require("Chromium", CHROMIUM.is_file(), f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    """A page in a fresh context; on failure, screenshots of its pages go to tmp_path."""
    context = browser.new_context(viewport={"width": 1024, "height": 768}, locale="en-GB")
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    if request.node.stash.get(_FAILED, False):
        for number, open_page in enumerate(context.pages):
            shot = tmp_path / f"failure-{number}.png"
            open_page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of {open_page.url}: {shot}")
    context.close()
