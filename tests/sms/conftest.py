"""Real parts for the sms tests: Prism serving Twilio's OpenAPI description, patients.

Prism (tests/peers/node_modules/.bin/prism) mocks Twilio's API from Twilio's own document
(tests/peers/twilio/twilio_api_v2010.json, MIT, copied from twilio-oai) and validates
every request the real ``twilio`` library makes against it.

That document defines only the success response (201) for creating a message or a call,
so ``Prefer: code=400`` alone would get Prism's own 404 ("not defined in the document").
The session's Prism therefore serves a copy with Twilio's documented error bodies added
to those two operations (``{"code", "message", "more_info", "status"}``, one named example
per error code); a request picks one with ``Prefer: code=400, example=e21610``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import httpx
import pytest

from carebridge.runtime import Runtime
from carebridge.settings import Settings
from sms.backends import ConsoleSender
from sms.twilio_client import TwilioSender
from tests.identity import factories
from tests.identity.roster_helpers import import_roster, link
from tests.realparts import require
from tests.sms.helpers import (
    PEERS,
    SPEC,
    Patient,
    People,
    PreferClient,
    Prism,
    error_spec,
    free_port,
    twilio_settings,
)


@pytest.fixture(scope="session")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prism]:
    binary = PEERS / "node_modules" / ".bin" / "prism"
    node = shutil.which("node")
    require("Prism (Twilio mock)", node is not None, "node is not on PATH")
    require("Prism (Twilio mock)", binary.exists(), "run `make test` to install tests/peers")
    require("Prism (Twilio mock)", SPEC.exists(), f"{SPEC} is missing")
    workdir = tmp_path_factory.mktemp("prism")
    spec = workdir / "twilio_with_errors.json"
    error_spec(spec)
    port = free_port()
    log_path = workdir / "prism.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(binary), "mock", "-h", "127.0.0.1", "-p", str(port), str(spec)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"Prism exited: {log_path.read_text()[-2000:]}")
            try:
                httpx.get(f"{url}/2010-04-01/Accounts.json", timeout=1)
                break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Prism did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield Prism(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # Twilio's settings on top of the suite's: webhooks need the auth token to verify.
    base = Settings(data_dir=tmp_path / "data", database_url=database_url)
    return twilio_settings(base, "http://127.0.0.1:9")


@pytest.fixture
def prefer_client() -> PreferClient:
    return PreferClient()


@pytest.fixture
def twilio_sender(runtime: Runtime, prism: Prism, prefer_client: PreferClient) -> TwilioSender:
    settings = twilio_settings(runtime.settings, prism.url)
    return TwilioSender(settings, http_client=prefer_client)


@pytest.fixture
def console_out() -> StringIO:
    return StringIO()


@pytest.fixture
def console(console_out: StringIO) -> ConsoleSender:
    return ConsoleSender(out=console_out)


@pytest.fixture
def people(runtime: Runtime, tmp_path: Path) -> People:
    """zeb, otto and pip: roster members with verified accounts and bearer sessions."""
    found: dict[str, Patient] = {}
    for name, patient_id in import_roster(runtime, tmp_path).items():
        account_id = factories.account(runtime)
        factories.totp(runtime, account_id)
        link(runtime, account_id, patient_id)
        token = factories.session(runtime, account_id, level=2)
        found[name] = Patient(account_id, patient_id, {"Authorization": f"Bearer {token}"})
    return People(runtime, found)
