"""Notifications dispatched per second through ``carebridge worker`` to Prism, on PostgreSQL.

Starts Prism (tests/peers) serving Twilio's OpenAPI description, seeds N patients with a
verified number and SMS on, one notification each, then runs 1, 2 and 4 worker processes
(the real ``carebridge worker``, the real twilio library) until every notification is
sent. Throughput counts from the first attempt recorded to the last SID recorded, so
process start-up is left out. Every notification takes the whole path: claim with SKIP
LOCKED, dispatcher decision, audit record, link token, rate-limit slot, HTTP to Prism,
SID recorded.

Then the per-sender rate limit: 2 workers sharing one sender limited to --rate messages a
second; the measured rate is (sends - 1) / (last send - first send). Usage:
    .venv/bin/python -P bench/notifications.py [--notifications 1000] [--rate 5]
(-P: the bench directory stays off sys.path, where a module could shadow a package.)
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import create_engine, delete, func, select, text

from carebridge import migrate
from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from sms import outbox, phone
from sms.models import (
    ContactPoint,
    Notification,
    Preferences,
    SecureLink,
    SendAttempt,
    SenderSlot,
)

ROOT = Path(__file__).resolve().parents[1]
PRISM = ROOT / "tests" / "peers" / "node_modules" / ".bin" / "prism"
SPEC = ROOT / "tests" / "peers" / "twilio" / "twilio_api_v2010.json"
FROM_NUMBER = "+15005550006"


POSTGRES = os.environ.get(
    "CAREBRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def fresh_database() -> tuple[str, str]:
    name = f"cb_bench_notify_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return POSTGRES.rsplit("/", 1)[0] + f"/{name}", name


def drop(name: str) -> None:
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_prism(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    if not PRISM.exists() or shutil.which("node") is None:
        sys.exit("Prism is not installed: run `make test` once (it installs tests/peers)")
    port = free_port()
    log = Path(directory, "prism.log").open("wb")  # noqa: SIM115  (lives as long as Prism)
    process = subprocess.Popen(  # noqa: S603  (our own peer binary)
        [str(PRISM), "mock", "-h", "127.0.0.1", "-p", str(port), str(SPEC)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/2010-04-01/Accounts.json", timeout=1)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    sys.exit("Prism did not start")


def seed_patients(rt: Runtime, count: int) -> list[str]:
    keyring = rt.keyring
    now = datetime.now(UTC)
    patients = []
    with transaction(rt.sessions) as db:
        for i in range(count):
            patient_id, contact_id = f"pt_bench{i:06d}", f"cp_bench{i:06d}"
            number = f"+1202{5550000 + i:07d}"
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
                    daily_cap=10,
                    weekly_cap=50,
                    insecure_consent=False,
                    updated_at=now,
                )
            )
            patients.append(patient_id)
    return patients


def reset_outbox(rt: Runtime, patients: list[str]) -> None:
    with transaction(rt.sessions) as db:
        for table in (SendAttempt, SecureLink, Notification, SenderSlot):
            db.execute(delete(table))
        for patient_id in patients:
            outbox.enqueue(db, patient_id=patient_id, kind=outbox.NEW_MESSAGE, thread_id="t")


def run_workers(
    rt: Runtime, directory: str, api_url: str, *, workers: int, rate: float, total: int
) -> tuple[float, list[float]]:
    """Run ``workers`` processes until ``total`` are sent; returns (seconds, send times)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CAREBRIDGE_")},
        "CAREBRIDGE_DATA_DIR": directory,
        "CAREBRIDGE_DATABASE_URL": rt.settings.effective_database_url,
        "CAREBRIDGE_SMS_BACKEND": "twilio",
        "CAREBRIDGE_TWILIO_ACCOUNT_SID": "AC" + "0123456789abcdef" * 2,
        "CAREBRIDGE_TWILIO_AUTH_TOKEN": "bench-auth-token",
        "CAREBRIDGE_TWILIO_FROM_NUMBER": FROM_NUMBER,
        "CAREBRIDGE_TWILIO_API_BASE_URL": api_url,
        "CAREBRIDGE_PUBLIC_BASE_URL": "https://notify.example.org",
        "CAREBRIDGE_SMS_RATE_PER_SECOND": str(rate),
        "CAREBRIDGE_LOG_LEVEL": "WARNING",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "carebridge.cli", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with rt.sessions() as db:
                sent = db.scalar(select(func.count()).where(Notification.state == "sent"))
            if sent == total:
                break
            time.sleep(0.25)
        else:
            sys.exit(f"only {sent} of {total} sent in 10 minutes")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    with rt.sessions() as db:
        first = db.scalar(select(func.min(SendAttempt.started_at)))
        last = db.scalar(select(func.max(SendAttempt.finished_at)))
        finished = [
            moment.timestamp()
            for moment in db.scalars(
                select(SendAttempt.finished_at).order_by(SendAttempt.finished_at)
            )
            if moment is not None
        ]
    assert first is not None and last is not None
    return (last - first).total_seconds(), finished


def prism_ceiling(api_url: str, requests: int = 400, threads: int = 4) -> float:
    """Messages per second Prism answers on its own (the same request, 4 clients)."""
    url = f"{api_url}/2010-04-01/Accounts/AC{'0123456789abcdef' * 2}/Messages.json"
    data = {"To": "+12025550143", "From": FROM_NUMBER, "Body": "x" * 120}

    def client(count: int) -> None:
        with httpx.Client(auth=("AC", "token")) as http:
            for _ in range(count):
                http.post(url, data=data)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(client, [requests // threads] * threads))
    return requests / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--notifications", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=5.0, help="the per-sender limit to test")
    parser.add_argument("--rate-sends", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        prism, api_url = start_prism(directory)
        url, name = fresh_database()
        try:
            rt = Runtime.build(Settings(data_dir=Path(directory), database_url=url))
            migrate.upgrade(rt.engine)
            patients = seed_patients(rt, args.notifications)
            print(f"{args.notifications} notifications, PostgreSQL, Prism serving Twilio's API")
            print(f"  (Prism alone answers {prism_ceiling(api_url):.0f} messages/s to 4 clients)")
            for workers in (1, 2, 4):
                reset_outbox(rt, patients)
                seconds, _ = run_workers(
                    rt, directory, api_url, workers=workers, rate=1000.0, total=args.notifications
                )
                print(
                    f"  {workers} worker{'s' if workers > 1 else ' '}: "
                    f"{args.notifications / seconds:7.1f} dispatched/s ({seconds:.1f} s)"
                )
            with rt.sessions() as db:
                audited = db.scalar(select(func.count()).select_from(AuditRecord))
            print(f"  ({audited} audit records written along the way)")
            subset = patients[: args.rate_sends]
            reset_outbox(rt, subset)
            _, times = run_workers(
                rt, directory, api_url, workers=2, rate=args.rate, total=len(subset)
            )
            measured = (len(times) - 1) / (times[-1] - times[0])
            gaps = [b - a for a, b in itertools.pairwise(times)]
            print(
                f"per-sender limit {args.rate:.1f}/s, 2 workers sharing it: measured "
                f"{measured:.2f}/s over {len(times)} sends (smallest gap {min(gaps) * 1000:.0f} ms)"
            )
            rt.close()
        finally:
            if name:
                drop(name)
            prism.terminate()
            prism.wait()


if __name__ == "__main__":
    main()
