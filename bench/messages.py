"""Secure messages posted and read per second on PostgreSQL, next to a plain endpoint.

Both endpoints run in the same server process against the same database in the same run:
- secure: POST /api/v1/messaging/threads/{id}/messages and GET .../threads/{id}?limit=20,
  with everything the service does (bearer token check, care-team resolution, per-thread
  key unwrap, AES-256-GCM, the audit record, the SMS outbox row; the chainer linking
  audit records runs in the same process, and its CPU time counts);
- plain: POST/GET /bench/plain/threads/{id}/messages of the same shape (JSON in, one row
  inserted or 20 rows selected, JSON out), unencrypted, unaudited, no token.
Reads happen after the posts, so each page holds 20 messages. The goal: secure >= 0.7x
plain. The server (one uvicorn worker) is pinned to one core,
wrk (Debian package `wrk`) to the other when there are two; PostgreSQL shares them.
Memory: the worker's resident set (VmRSS) after each run, and its peak (VmHWM).
Usage:
    .venv/bin/python bench/messages.py [--seconds 8] [--connections 8]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from http_shell import free_port, wait_until_up

from carebridge.wiring import CareTeamFollowers

# This file's name is the package's: without its directory on the path, "messaging" is
# the package again.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

THREADS = 32
BODY = "Your results came back normal. " * 10  # ~310 characters, a typical message
PROVIDER_APP = "bench-provider-app"
_TWO_CORES = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
# The server on one core, wrk on the other (PostgreSQL floats).
PINS = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if _TWO_CORES else ([], [])


# The server side (run as `bench/messages.py serve PORT` in a child process)


def serve(port: int) -> None:
    import uvicorn  # noqa: PLC0415
    from pydantic import BaseModel  # noqa: PLC0415
    from sqlalchemy import text  # noqa: PLC0415
    from starlette.concurrency import run_in_threadpool  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import JSONResponse, Response  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    from carebridge.app import create_app  # noqa: PLC0415
    from carebridge.db import transaction  # noqa: PLC0415
    from carebridge.runtime import Runtime  # noqa: PLC0415
    from carebridge.settings import load_settings  # noqa: PLC0415
    from messaging.api import _read_json  # noqa: PLC0415

    runtime = Runtime.build(load_settings())
    runtime.keyring  # noqa: B018
    disable(os.environ.get("BENCH_DISABLE", ""))

    class PlainMessage(BaseModel):
        body: str

    def insert(thread_id: str, body: str) -> dict[str, object]:
        message_id = f"msg_{secrets.token_urlsafe(16)}"
        now = datetime.now(UTC)
        with transaction(runtime.sessions) as db:
            db.execute(
                text(
                    "INSERT INTO bench_plain_message (id, thread_id, body, created_at) "
                    "VALUES (:id, :thread_id, :body, :created_at)"
                ),
                {"id": message_id, "thread_id": thread_id, "body": body, "created_at": now},
            )
        return {"id": message_id, "body": body, "created_at": now.isoformat()}

    def select(thread_id: str) -> list[dict[str, object]]:
        with runtime.sessions() as db:
            rows = db.execute(
                text(
                    "SELECT id, body, created_at FROM bench_plain_message "
                    "WHERE thread_id = :thread_id ORDER BY created_at LIMIT 20"
                ),
                {"thread_id": thread_id},
            ).all()
        return [{"id": r[0], "body": r[1], "created_at": r[2].isoformat()} for r in rows]

    async def plain_post(request: Request) -> Response:
        payload = await _read_json(request, PlainMessage)
        thread_id = str(request.path_params["thread_id"])
        created = await run_in_threadpool(insert, thread_id, payload.body)
        return JSONResponse(created, status_code=201)

    async def plain_get(request: Request) -> Response:
        rows = await run_in_threadpool(select, str(request.path_params["thread_id"]))
        return JSONResponse({"messages": rows})

    app = create_app(runtime)
    app.router.routes.insert(
        0, Route("/bench/plain/threads/{thread_id}/messages", plain_post, methods=["POST"])
    )
    app.router.routes.insert(
        0, Route("/bench/plain/threads/{thread_id}/messages", plain_get, methods=["GET"])
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def disable(features: str) -> None:
    """Attribution runs: switch parts of the secure path off, in this process only."""
    from carebridge import audit  # noqa: PLC0415
    from messaging import crypto, threads  # noqa: PLC0415

    wanted = {f for f in features.split(",") if f}
    if "audit" in wanted:
        audit.append = lambda *args, **kwargs: None  # type: ignore[assignment,return-value]
        audit.stage = lambda *args, **kwargs: None  # type: ignore[assignment,return-value]
    if "outbox" in wanted:
        together = threads.insert_together

        def without_notifications(db, rows):  # type: ignore[no-untyped-def]
            together(db, [row for row in rows if row[0].name != "notification"])

        threads.insert_together = without_notifications
    if "crypto" in wanted:
        crypto.cipher_for = lambda keyring, thread: crypto.ThreadCipher(thread.id, b"")  # type: ignore[assignment]
        crypto.ThreadCipher.seal = lambda self, record, field, data: data  # type: ignore[assignment,method-assign]
        crypto.ThreadCipher.open = lambda self, record, field, blob: blob  # type: ignore[assignment,method-assign]


# The driver


def setup(database_url: str, data_dir: str) -> tuple[list[str], str]:
    """A migrated database with a patient, a care team, THREADS threads and a plain table;
    returns the thread IDs and a care-team app token."""
    os.environ.update(CAREBRIDGE_DATABASE_URL=database_url, CAREBRIDGE_DATA_DIR=data_dir)
    from joserfc import jwt  # noqa: PLC0415
    from sqlalchemy import text  # noqa: PLC0415

    from carebridge import migrate  # noqa: PLC0415
    from carebridge.db import transaction  # noqa: PLC0415
    from carebridge.runtime import Runtime  # noqa: PLC0415
    from carebridge.settings import load_settings  # noqa: PLC0415
    from identity.roster import importer  # noqa: PLC0415
    from messaging import care_teams, threads  # noqa: PLC0415
    from messaging.access import Actor  # noqa: PLC0415

    runtime = Runtime.build(load_settings())
    migrate.upgrade(runtime.engine)
    with runtime.engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE bench_plain_message (id varchar(40) PRIMARY KEY, "
                "thread_id varchar(40) NOT NULL, body text NOT NULL, "
                "created_at timestamptz NOT NULL)"
            )
        )
        connection.execute(
            text("CREATE INDEX ix_bench_plain ON bench_plain_message (thread_id, created_at)")
        )
    roster = Path(data_dir) / "roster.csv"
    roster.write_text(
        "first_name,last_name,dob,ssn4,zip,group,member_id,status\n"
        "Bench,Patient,1970-01-01,0000,02139,,BENCH-1,\n",
        encoding="utf-8",
    )
    importer.import_roster(runtime, roster, source="bench", followers=CareTeamFollowers())
    with runtime.sessions() as db:
        patient_id = db.execute(text("SELECT patient_id FROM roster_member")).scalar_one()
    team = care_teams.create(runtime, name="Bench clinic", retention_days=30, actor="bench")
    care_teams.add_client(runtime, team, PROVIDER_APP, actor="bench")
    actor = Actor("app", PROVIDER_APP, team)
    made = []
    for n in range(THREADS):
        with transaction(runtime.sessions) as db:
            thread, _ = threads.create_thread(
                db,
                runtime.keyring,
                runtime.settings,
                actor,
                patient_id=patient_id,
                subject=f"Bench {n}",
                body=BODY,
            )
            made.append(thread.id)
    signing = runtime.keyring.active_signing_key
    now = int(time.time())
    token = jwt.encode(
        {"alg": signing.alg, "typ": "at+jwt", "kid": signing.kid},
        {
            "iss": runtime.settings.issuer,
            "aud": runtime.settings.api_audience,
            "sub": PROVIDER_APP,
            "client_id": PROVIDER_APP,
            "scope": "messaging.read messaging.write",
            "iat": now,
            "exp": now + 3600,
            "jti": secrets.token_urlsafe(16),
        },
        signing.key,
        algorithms=[signing.alg],
    )
    runtime.close()
    return made, token


def lua(path_template: str, thread_ids: list[str], *, post: bool, token: str | None) -> str:
    ids = ", ".join(f'"{t}"' for t in thread_ids)
    lines = [f"local threads = {{{ids}}}", "math.randomseed(os.time())"]
    if post:
        lines += [
            'wrk.method = "POST"',
            'wrk.headers["Content-Type"] = "application/json"',
            f'wrk.body = \'{{"body": "{BODY}"}}\'',
        ]
    if token:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {token}"')
    lines += [
        "request = function()",
        "  local t = threads[math.random(#threads)]",
        f'  return wrk.format(nil, (string.gsub("{path_template}", "{{id}}", t)))',
        "end",
        "local errors = 0",
        "response = function(status, headers, body)",
        "  if status >= 300 then errors = errors + 1 end",
        "end",
        "done = function(summary, latency, requests)",
        '  io.write(string.format("non2xx %d\\n", errors))',
        "end",
    ]
    return "\n".join(lines) + "\n"


def run_wrk(
    script: str, base: str, seconds: int, connections: int, pin: list[str]
) -> tuple[float, str, str, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        output = subprocess.run(  # noqa: S603
            [
                *pin,
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                handle.name,
                base,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    errors = re.search(r"non2xx (\d+)", output)
    assert rate and p50 and p99 and errors, output
    return float(rate[1]), p50[1], p99[1], errors[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    current = re.search(r"VmRSS:\s+(\d+) kB", status)
    peak = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert current and peak
    return int(current[1]) // 1024, int(peak[1]) // 1024


def start_server(
    url: str, data_dir: str, pin: list[str], disabled: str = ""
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBRIDGE_")}
    env.update(
        CAREBRIDGE_DATABASE_URL=url,
        CAREBRIDGE_DATA_DIR=data_dir,
        CAREBRIDGE_LOG_LEVEL="WARNING",
        BENCH_DISABLE=disabled,
    )
    server = subprocess.Popen(  # noqa: S603
        [*pin, sys.executable, __file__, "serve", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_up(f"{base}/healthz")
    return server, base


def measure(
    server: subprocess.Popen[bytes],
    base: str,
    *,
    runs: list[tuple[str, str, bool, str | None]],
    thread_ids: list[str],
    args: argparse.Namespace,
    pin: list[str],
) -> dict[str, float]:
    results: dict[str, float] = {}
    # A short warm-up of each, so none pays for first connections.
    for _, path, post, bearer in runs:
        run_wrk(lua(path, thread_ids, post=post, token=bearer), base, 1, 2, pin)
    for label, path, post, bearer in runs:
        script = lua(path, thread_ids, post=post, token=bearer)
        cpu_before = cpu_seconds(server.pid)
        rate, p50, p99, errors = run_wrk(script, base, args.seconds, args.connections, pin)
        per_request = (cpu_seconds(server.pid) - cpu_before) * 1000 / max(1.0, rate * args.seconds)
        results[label] = rate
        now_mib, peak_mib = rss(server.pid)
        print(
            f"  {label} {rate:8.0f} req/s  p50 {p50:>8}  p99 {p99:>8}  non-2xx {errors}  "
            f"server CPU {per_request:.2f} ms/req  RSS {now_mib} MiB (peak {peak_mib})"
        )
    return results


def attribution(
    url: str,
    data_dir: str,
    runs: list[tuple[str, str, bool, str | None]],
    thread_ids: list[str],
    args: argparse.Namespace,
) -> None:
    """The secure endpoints again, with the audit append, then also encryption and the
    outbox, switched off: what each costs."""
    for disabled in ("audit", "audit,crypto,outbox"):
        print(f"Attribution: secure endpoints with {disabled} switched off")
        server, base = start_server(url, data_dir, PINS[0], disabled)
        try:
            measure(server, base, runs=runs, thread_ids=thread_ids, args=args, pin=PINS[1])
        finally:
            server.terminate()
            server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "CAREBRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument(
        "--attribution",
        action="store_true",
        help="also run the secure endpoints with audit, then audit+crypto+outbox, switched off",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/messages.py needs wrk: apt-get install wrk")
    from sqlalchemy import create_engine, text  # noqa: PLC0415
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    name = f"cb_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.postgres).set(database=name).render_as_string(hide_password=False)
    server_pin, client_pin = PINS
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            thread_ids, token = setup(url, data_dir)
            secure_post = "/api/v1/messaging/threads/{id}/messages"
            secure_get = "/api/v1/messaging/threads/{id}?limit=20"
            plain = "/bench/plain/threads/{id}/messages"
            runs = [
                ("plain  POST", plain, True, None),
                ("secure POST", secure_post, True, token),
                ("plain  GET ", plain, False, None),
                ("secure GET ", secure_get, False, token),
            ]
            print(
                f"PostgreSQL, 1 uvicorn worker, {args.connections} connections, "
                f"{args.seconds}s per run, {THREADS} threads, {len(BODY)}-char bodies"
            )
            server, base = start_server(url, data_dir, server_pin)
            try:
                print(f"  idle worker RSS {rss(server.pid)[0]} MiB")
                results = measure(
                    server, base, runs=runs, thread_ids=thread_ids, args=args, pin=client_pin
                )
            finally:
                server.terminate()
                server.wait(timeout=10)
            post_ratio = results["secure POST"] / results["plain  POST"]
            get_ratio = results["secure GET "] / results["plain  GET "]
            print(f"  secure/plain: POST {post_ratio:.2f}x  GET {get_ratio:.2f}x (goal 0.7x)")
            if args.attribution:
                attribution(url, data_dir, [runs[1], runs[3]], thread_ids, args)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        main()
