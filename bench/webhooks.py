"""Webhook events delivered per second from the outbox, and commit-to-arrival delay.

On PostgreSQL (a fresh database), with a receiver in its own process on loopback that
verifies each request's signature with the standardwebhooks library, as an app would:

1. Throughput: N events are written (one endpoint), then 1 and then 2 outbox workers
   (threads running the outbox's drain, the worker's loop: claim with SKIP LOCKED, sign,
   POST, record) deliver them all; events per second from the first claim to the last
   arrival.
2. Delay: a writer commits an event every 20 ms for a while, one worker runs the outbox
   job every second as ``carebridge worker`` does; per event, the time from its commit
   to its arrival at the receiver (p50, p99). The job's one-second period dominates it.

Usage:
    .venv/bin/python -P bench/webhooks.py [--events 2000]
(-P: the bench directory stays off sys.path, where a module could shadow a package.)
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, delete, text

from carebridge import events, migrate, outbox
from carebridge.db import transaction
from carebridge.events import endpoints
from carebridge.events.delivery import WebhookHandler
from carebridge.runtime import Runtime
from carebridge.settings import Settings

POSTGRES = os.environ.get(
    "CAREBRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
CLIENT = "bench-app"

RECEIVER = """
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from standardwebhooks import Webhook
port, secret, log = int(sys.argv[1]), sys.argv[2], open(sys.argv[3], "a", buffering=1)
verifier = Webhook(secret)
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        verifier.verify(body, headers)
        log.write(f"{headers['webhook-id']} {time.time()}\\n")
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def fresh_database() -> tuple[str, str]:
    name = f"cb_bench_hooks_{uuid.uuid4().hex[:8]}"
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


def arrivals(log: Path) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in log.read_text().splitlines():
        event_id, moment = line.split()
        found.setdefault(event_id, float(moment))
    return found


def emit_one(rt: Runtime, index: int) -> str:
    with transaction(rt.sessions) as db:
        (event_id,) = events.emit(
            db,
            events.MESSAGE_CREATED,
            [events.Audience(CLIENT, f"pt_{index}")],
            {"thread": f"th_{index}", "message": f"msg_{index}"},
        )
    return event_id


def run_workers(rt: Runtime, count: int, log: Path, expected: int) -> float:
    """Workers drain until every event arrived; seconds from start to last arrival."""
    channels = outbox.Channels(handlers={events.CHANNEL: WebhookHandler(rt)})
    done = threading.Event()

    def work() -> None:
        while not done.is_set():
            if outbox.drain(rt, channels, max_seconds=5, limit=20) == 0:
                time.sleep(0.01)

    started = time.time()
    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    while len(arrivals(log)) < expected:
        time.sleep(0.05)
    done.set()
    for thread in threads:
        thread.join()
    return max(arrivals(log).values()) - started


def measure_delay(rt: Runtime, log: Path, seconds: float) -> None:
    """Commit to arrival, under the worker's one-second job period."""
    log.write_text("")
    channels = outbox.Channels(handlers={events.CHANNEL: WebhookHandler(rt)})
    stop = threading.Event()

    def job() -> None:
        while not stop.is_set():
            outbox.drain(rt, channels)
            stop.wait(1.0)

    worker = threading.Thread(target=job)
    worker.start()
    committed: dict[str, float] = {}
    deadline = time.monotonic() + seconds
    index = 10_000_000
    while time.monotonic() < deadline:
        event_id = emit_one(rt, index)
        committed[event_id] = time.time()
        index += 1
        time.sleep(0.02)
    while len(arrivals(log)) < len(committed):
        time.sleep(0.1)
    stop.set()
    worker.join()
    seen = arrivals(log)
    delays = sorted((seen[e] - t) * 1000 for e, t in committed.items())
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    print(
        f"commit to arrival, 1 worker (job every 1 s), {len(delays)} events: "
        f"p50 {statistics.median(delays):.0f} ms, p99 {p99:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--delay-seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        url, name = fresh_database()
        port = free_port()
        settings = Settings(data_dir=Path(directory), database_url=url, webhook_allow_loopback=True)
        rt = Runtime.build(settings)
        receiver = None
        try:
            migrate.upgrade(rt.engine)
            with transaction(rt.sessions) as db:
                secret = endpoints.add(
                    db,
                    rt.keyring,
                    settings,
                    client_id=CLIENT,
                    url=f"http://127.0.0.1:{port}/hooks",
                    actor="bench",
                ).secret
            log = Path(directory, "arrivals.log")
            receiver = subprocess.Popen(  # noqa: S603  (our own interpreter)
                [sys.executable, "-c", RECEIVER, str(port), secret, str(log)]
            )
            time.sleep(1.0)
            print(f"{args.events} webhook events, PostgreSQL, a verifying receiver on loopback")
            for workers in (1, 2):
                log.write_text("")
                with transaction(rt.sessions) as db:
                    db.execute(delete(outbox.OutboxMessage))
                for index in range(args.events):
                    emit_one(rt, index)
                seconds = run_workers(rt, workers, log, args.events)
                print(
                    f"  {workers} worker{'s' if workers > 1 else ' '}: "
                    f"{args.events / seconds:7.1f} delivered/s ({seconds:.1f} s)"
                )
            measure_delay(rt, log, args.delay_seconds)
        finally:
            if receiver is not None:
                receiver.terminate()
                receiver.wait()
            rt.close()
            drop(name)


if __name__ == "__main__":
    main()
