"""Workers killed mid-batch (SIGKILL) lose nothing and send nothing twice.

Real processes (``carebridge worker``) send through the real twilio library to Prism. A
small recording proxy sits between them and Prism: it is "Twilio's front door", noting
every message Twilio would have accepted, and it can hold requests open, so the kill
lands exactly where it hurts: after Twilio got a message, before the worker wrote down
the SID. Afterwards the test plays Twilio's part and posts the (signed) status callback
of every message the proxy saw, then restarts the workers and checks that each
notification went out exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from carebridge.db import transaction
from carebridge.runtime import Runtime
from sms import outbox, phone
from sms.models import ContactPoint, Notification, Preferences, SecureLink
from tests.sms.helpers import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FROM_NUMBER,
    PUBLIC,
    SMS_LINK,
    Prism,
    client_for,
    post_signed,
)

PATIENTS = 24


class FrontDoor:
    """A recording, optionally holding, HTTP proxy in front of Prism."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.sent: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.hold_after: int | None = None
        self.held = 0
        self.release = threading.Event()
        self.changed = threading.Condition(self.lock)
        door = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path.endswith("/Messages.json"):
                    params = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                    with door.changed:
                        door.sent.append(params)
                        hold = door.hold_after is not None and len(door.sent) > door.hold_after
                        if hold:
                            door.held += 1
                        door.changed.notify_all()
                    if hold:
                        door.release.wait(60)
                        return  # the worker is gone by now; nobody reads an answer
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length")
                }
                answer = httpx.post(door.upstream + self.path, content=body, headers=headers)
                self.send_response(answer.status_code)
                self.send_header("content-type", answer.headers.get("content-type", ""))
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_held(self, count: int, timeout: float = 60) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.held >= count, timeout), (
                f"only {self.held} requests held, {len(self.sent)} seen"
            )

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def front_door(prism: Prism) -> Iterator[FrontDoor]:
    door = FrontDoor(prism.url)
    yield door
    door.close()


def seed(runtime: Runtime) -> list[str]:
    """PATIENTS patients with verified numbers and SMS on, one notification each."""
    keyring = runtime.keyring
    now = datetime.now(UTC)
    ids = []
    with transaction(runtime.sessions) as db:
        for i in range(PATIENTS):
            patient_id = f"pt_crash{i:03d}"
            number = f"+1202555{1000 + i:04d}"
            contact_id = f"cp_crash{i:03d}"
            db.add(
                ContactPoint(
                    id=contact_id,
                    patient_id=patient_id,
                    number_encrypted=phone.encrypt(
                        keyring, number, contact_id=contact_id, patient_id=patient_id
                    ),
                    number_hash=phone.number_hash(keyring, number),
                    last_digits=number[-4:],
                    verified_at=now,
                    sms_usable=True,
                    voice_usable=True,
                    code_failures=0,
                    codes_sent=0,
                    created_at=now,
                    updated_at=now,
                )
            )
            db.add(
                Preferences(
                    patient_id=patient_id,
                    sms_enabled=True,
                    sms_opted_in_at=now,
                    voice_enabled=False,
                    voicemail_enabled=False,
                    time_zone="UTC",
                    quiet_start="00:00",
                    quiet_end="00:00",
                    daily_cap=1,
                    weekly_cap=3,
                    insecure_consent=False,
                    updated_at=now,
                )
            )
            ids.append(
                outbox.enqueue(db, patient_id=patient_id, kind=outbox.NEW_MESSAGE, thread_id="t")
            )
    return ids


def start_workers(
    runtime: Runtime, api_url: str, count: int, logs: Path
) -> list[subprocess.Popen[bytes]]:
    settings = runtime.settings
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CAREBRIDGE_")},
        "CAREBRIDGE_DATA_DIR": str(settings.data_dir),
        "CAREBRIDGE_DATABASE_URL": settings.effective_database_url,
        "CAREBRIDGE_SMS_BACKEND": "twilio",
        "CAREBRIDGE_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "CAREBRIDGE_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "CAREBRIDGE_TWILIO_FROM_NUMBER": FROM_NUMBER,
        "CAREBRIDGE_TWILIO_API_BASE_URL": api_url,
        "CAREBRIDGE_TWILIO_TIMEOUT_SECONDS": "3",
        "CAREBRIDGE_PUBLIC_BASE_URL": PUBLIC,
        "CAREBRIDGE_SMS_RATE_PER_SECOND": "500",
        "CAREBRIDGE_SMS_BATCH_SIZE": "4",
        "CAREBRIDGE_SMS_RECONCILE_SECONDS": "2",
    }
    processes = []
    for n in range(count):
        with (logs / f"worker-{len(list(logs.iterdir()))}-{n}.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "carebridge.cli", "worker"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return processes


def states(runtime: Runtime, ids: list[str]) -> dict[str, str]:
    with runtime.sessions() as db:
        rows = db.scalars(select(Notification).where(Notification.id.in_(ids)))
        return {row.id: row.state for row in rows}


def notification_of(runtime: Runtime, body: str) -> str:
    match = SMS_LINK.search(body)
    assert match, "a message without its link"
    token_hash = runtime.keyring.lookup_hash("sms-link", match.group(1))
    with runtime.sessions() as db:
        link = db.scalars(select(SecureLink).where(SecureLink.token_hash == token_hash)).one()
        assert link.notification_id is not None
        return link.notification_id


def test_killed_workers_lose_nothing_and_send_nothing_twice(
    runtime: Runtime, backend: str, front_door: FrontDoor, tmp_path: Path
) -> None:
    ids = seed(runtime)
    workers_count = 3 if backend == "postgresql" else 1
    logs = tmp_path / "logs"
    logs.mkdir()
    front_door.hold_after = 6
    workers = start_workers(runtime, front_door.url, workers_count, logs)
    try:
        # Every worker is now inside a call Twilio has received: kill them there.
        front_door.wait_held(workers_count)
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
        for worker in workers:
            worker.wait(timeout=10)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    before = states(runtime, ids)
    assert "sending" in before.values()  # the kill did strand some mid-send
    seen_before_restart = list(front_door.sent)
    # Twilio reports on every message it received, as it would have done anyway.
    with client_for(runtime) as app:
        for params in seen_before_restart:
            callback = urlsplit(params["StatusCallback"]).path
            response = post_signed(
                app, callback, {"MessageSid": "SM" + "a" * 32, "MessageStatus": "sent"}
            )
            assert response.status_code == 204
    front_door.hold_after = None
    workers = start_workers(runtime, front_door.url, workers_count, logs)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            current = states(runtime, ids)
            if all(state == "sent" for state in current.values()):
                break
            time.sleep(0.2)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
    final = states(runtime, ids)
    assert set(final.values()) == {"sent"}, final
    sent_for = [notification_of(runtime, params["Body"]) for params in front_door.sent]
    assert sorted(sent_for) == sorted(ids)  # each one, exactly once
