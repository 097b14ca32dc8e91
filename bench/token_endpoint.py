"""Token endpoint throughput, p99 and CPU per request: carebridge next to node oidc-provider.

For each grant (client_credentials, refresh_token, authorization_code) wrk loads one
server at a time for a bounded time, all in the same run:

- carebridge (`carebridge serve`, one process), persisting to the real database
  (PostgreSQL by default);
- "oidc-provider (PostgreSQL)": oidc-provider 9 (tests/peers/bench-provider.mjs, one node
  process) persisting through an adapter over npm `pg` to a JSONB table in the same bench
  database: both persist to the real database, side by side (PostgreSQL runs only);
- "oidc-provider (memory)": the same, keeping everything in process memory;
- "oidc-provider/jwt (PostgreSQL)": the same job as carebridge's, like for like: ES256 JWT
  access tokens (RFC 9068) for a resource server, as carebridge must issue, instead of
  oidc-provider's default opaque ones, which it stores; codes and refresh tokens persisted
  to PostgreSQL as above (JWTs are stored nowhere). On a SQLite run, "oidc-provider/jwt"
  issues client credentials JWTs only.

Both use client_secret_basic, ES256, PKCE S256 and refresh-token rotation; both have
their codes and refresh tokens minted beforehand, one per request, for returning users
(carebridge has their subjects for the client recorded, as their first sign-in did), fed
to wrk by a Lua script. Each server runs pinned to one core and wrk to the other
(taskset, when there are two); PostgreSQL shares them, so requests per second are a
floor. The per-core figures are the server's own CPU time (utime + stime from
/proc/PID/stat, before and after each run): "cpu ms/req" and "req/cpu-s" (requests per
CPU-second, i.e. throughput per core if the server had one to
itself). "db ms/req" is the CPU time of the PostgreSQL backends serving the bench
database in that run (pg_stat_activity), the database's share of the work. Each grant
ends with carebridge / oidc-provider ratios for every variant: requests per second,
requests per server CPU-second (the goal's measure), and, against a variant persisting to
PostgreSQL, requests per CPU-second of server and database together. Usage:
    .venv/bin/python bench/token_endpoint.py [--seconds 6] [--connections 16]
        [--count 40000] [--database-url postgresql://...|sqlite]
Needs wrk (apt-get install wrk), node and tests/peers/node_modules (npm ci there).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

# bench/ holds scripts named like the packages (messaging.py): import the packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from sqlalchemy import create_engine, insert, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from carebridge import migrate  # noqa: E402
from carebridge.db import make_engine, transaction  # noqa: E402
from carebridge.runtime import Runtime  # noqa: E402
from carebridge.settings import Settings  # noqa: E402
from identity.models import Account  # noqa: E402
from identity.oidc import clients, subjects  # noqa: E402
from identity.oidc.models import (  # noqa: E402
    OidcAuthorizationCode,
    OidcClient,
    OidcRefreshToken,
    OidcSubject,
)

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "tests" / "peers"
DEFAULT_POSTGRES = os.environ.get(
    "CAREBRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIRECT = "https://app.example.org/callback"
ALL = {"client_credentials", "refresh_token", "authorization_code"}
# Each server on one core, wrk on the other, when there are two (PostgreSQL floats): a
# server's throughput per core, measured as such. Both servers are pinned alike.
_TWO_CORES = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
PINS = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if _TWO_CORES else ([], [])
SERVER_PIN, WRK_PIN = PINS
SCOPE = "openid offline_access"
LUA = """
local tokens, i = {}, 0
local path = os.getenv("BENCH_TOKENS")
if path and path ~= "" then
  for line in io.lines(path) do tokens[#tokens + 1] = line end
end
local template = os.getenv("BENCH_BODY")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")
request = function()
  i = i + 1
  local body = template:gsub("TOKEN", tokens[i] or "exhausted")
  return wrk.format(nil, nil, nil, body)
end
local shown = false
response = function(status, headers, body)
  if status ~= 200 and not shown and os.getenv("BENCH_DEBUG") then
    shown = true
    io.stderr:write(status .. " " .. body .. "\\n")
  end
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if process.poll() is not None:
            sys.exit(f"server exited before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (loopback URL we built)
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"server did not answer {url}")


def database(url: str) -> tuple[str, str | None]:
    """A fresh database to persist to, and the name to drop afterwards (PostgreSQL)."""
    if url == "sqlite":
        return "", None
    name = f"cb_bench_{os.getpid()}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False), name


def drop(url: str, name: str | None) -> None:
    if name is None:
        return
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def seed(settings: Settings, count: int, secret: str, challenge: str, out: Path) -> str:
    """Migrate, register the client, mint codes and refresh tokens; returns the client ID."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    migrate.upgrade(engine)
    engine.dispose()
    runtime = Runtime.build(settings)
    now = datetime.now(UTC)
    try:
        with transaction(runtime.sessions) as db:
            created = clients.create(
                db,
                settings,
                name="Bench",
                client_type="confidential",
                redirect_uris=[REDIRECT],
                scopes=[*SCOPE.split(), "messaging.read"],
            )
            row = db.get(OidcClient, created.client_id)
            assert row is not None
            row.secret_hash = clients.hash_secret(secret)
            accounts = [f"acc_bench{i:05d}" for i in range(min(count, 1000))]
            db.execute(
                insert(Account),
                [{"id": a, "created_at": now, "status": "active"} for a in accounts],
            )
            # Returning users: an earlier sign-in recorded each one's subject for this client.
            client = clients.find(db, created.client_id)
            assert client is not None
            db.execute(
                insert(OidcSubject),
                [
                    {
                        "client_id": created.client_id,
                        "subject": subjects.pairwise(
                            runtime.keyring, sector=client.sector, account_id=a
                        ),
                        "account_id": a,
                        "created_at": now,
                    }
                    for a in accounts
                ],
            )
            codes, refresh = [], []
            code_rows, refresh_rows = [], []
            for i in range(count):
                code, token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
                codes.append(code)
                refresh.append(token)
                account = accounts[i % len(accounts)]
                code_rows.append(
                    {
                        "code_hash": hashlib.sha256(code.encode()).hexdigest(),
                        "family_id": f"fam_c{i}",
                        "client_id": created.client_id,
                        "account_id": account,
                        "redirect_uri": REDIRECT,
                        "scope": SCOPE,
                        "nonce": "n",
                        "code_challenge": challenge,
                        "code_challenge_method": "S256",
                        "auth_time": now,
                        "created_at": now,
                        "expires_at": now + timedelta(hours=1),
                    }
                )
                refresh_rows.append(
                    {
                        "token_hash": hashlib.sha256(token.encode()).hexdigest(),
                        "family_id": f"fam_r{i}",
                        "client_id": created.client_id,
                        "account_id": account,
                        "scope": SCOPE,
                        "auth_time": now,
                        "issued_at": now,
                        "expires_at": now + timedelta(days=1),
                    }
                )
            db.execute(insert(OidcAuthorizationCode), code_rows)
            db.execute(insert(OidcRefreshToken), refresh_rows)
    finally:
        runtime.close()
    (out / "cb-codes.txt").write_text("\n".join(codes) + "\n")
    (out / "cb-refresh.txt").write_text("\n".join(refresh) + "\n")
    return created.client_id


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants, all threads (/proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        todo.extend(children.get(current, []))
    return total / os.sysconf("SC_CLK_TCK")


class DatabaseCpu:
    """CPU time of the PostgreSQL backends connected to the bench database (same host)."""

    def __init__(self, admin_url: str, name: str | None) -> None:
        self.name = name
        self.engine = create_engine(admin_url, isolation_level="AUTOCOMMIT") if name else None

    def sample(self) -> dict[int, float]:
        if self.engine is None:
            return {}
        with self.engine.connect() as connection:
            pids = connection.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = :name"),
                {"name": self.name},
            ).scalars()
            return {pid: cpu_seconds(pid) for pid in pids}

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()


@dataclass
class Result:
    rate: float
    p50: str
    p99: str
    failed: int
    total: int
    cpu: float  # server CPU seconds over the run
    db_cpu: float | None  # PostgreSQL backends' CPU seconds over the run

    @property
    def per_cpu_second(self) -> float:
        return self.total / self.cpu if self.cpu else float("inf")

    @property
    def with_database_per_cpu_second(self) -> float | None:
        """Requests per CPU-second of the server and its database backends together."""
        if self.db_cpu is None:
            return None
        spent = self.cpu + self.db_cpu
        return self.total / spent if spent else float("inf")

    def line(self) -> str:
        db = (
            f"  db {1000 * self.db_cpu / self.total:5.2f} ms/req" if self.db_cpu is not None else ""
        )
        return (
            f"{self.rate:7.0f} req/s  p50 {self.p50:>8}  p99 {self.p99:>8}  "
            f"errors {self.failed}/{self.total}  "
            f"cpu {1000 * self.cpu / self.total:5.2f} ms/req = {self.per_cpu_second:6.0f} req/cpu-s"
            f"{db}"
        )


def wrk(
    url: str,
    seconds: int,
    connections: int,
    env: dict[str, str],
    script: Path,
    *,
    pid: int,
    database_cpu: DatabaseCpu,
) -> Result:
    db_before = database_cpu.sample()
    before = cpu_seconds(pid)
    result = subprocess.run(  # noqa: S603
        [
            *WRK_PIN,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    cpu = cpu_seconds(pid) - before
    db_after = database_cpu.sample()
    output = result.stdout
    if result.stderr.strip():
        print(result.stderr.strip()[:500])
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    total = re.search(r"(\d+) requests in", output)
    assert rate and p50 and p99 and total, output
    # A backend that started during the run started from zero.
    db_cpu = (
        sum(after - db_before.get(backend, 0.0) for backend, after in db_after.items())
        if database_cpu.engine is not None
        else None
    )
    return Result(
        rate=float(rate[1]),
        p50=p50[1],
        p99=p99[1],
        failed=int(errors[1]) if errors else 0,
        total=max(int(total[1]), 1),
        cpu=cpu,
        db_cpu=db_cpu,
    )


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL as node's `pg` takes it (no driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def main() -> None:  # noqa: PLR0912, PLR0915  (a script: set up, run, report)
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--count", type=int, default=40000)
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES)
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let servers and wrk float over the cores (threads of one process then contend "
        "for Python's lock across cores)",
    )
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="carebridge alone (its own figures, no ratios): for trying a change quickly",
    )
    parser.add_argument(
        "--grant",
        action="append",
        choices=sorted(ALL),
        help="run only this grant (repeatable; default: all three)",
    )
    args = parser.parse_args()
    if args.no_pin:
        global SERVER_PIN, WRK_PIN  # a script setting, read by wrk() too
        SERVER_PIN, WRK_PIN = [], []
    node = shutil.which("node")
    if shutil.which("wrk") is None or node is None:
        sys.exit("bench/token_endpoint.py needs wrk and node")
    secret = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    challenge_text = challenge.rstrip(b"=").decode()
    url, dropped = database(args.database_url)
    database_cpu = DatabaseCpu(args.database_url, dropped)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as directory:
            out = Path(directory)
            script = out / "feed.lua"
            script.write_text(LUA)
            cb_port = free_port()
            settings = Settings(
                issuer=f"http://127.0.0.1:{cb_port}", data_dir=out / "data", database_url=url
            )
            started = time.monotonic()
            client_id = seed(settings, args.count, secret, challenge_text, out)
            took = time.monotonic() - started
            print(f"seeded {args.count} codes and refresh tokens in {took:.1f} s")
            env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBRIDGE_")}
            env.update(
                CAREBRIDGE_DATA_DIR=str(out / "data"),
                CAREBRIDGE_DATABASE_URL=url,
                CAREBRIDGE_ISSUER=settings.issuer,
                CAREBRIDGE_LOG_LEVEL="WARNING",
            )
            binary = Path(sys.executable).with_name("carebridge")
            processes.append(
                subprocess.Popen(  # noqa: S603
                    [*SERVER_PIN, str(binary), "serve", "--port", str(cb_port), "--workers", "1"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_until_up(f"http://127.0.0.1:{cb_port}/healthz", processes[-1])
            backend = "SQLite" if url == "" else "PostgreSQL"
            # name -> (port, client ID, token files prefix, process, grants it runs)
            servers: dict[str, tuple[int, str, Path, subprocess.Popen[bytes], set[str]]] = {
                f"carebridge ({backend})": (cb_port, client_id, out / "cb-", processes[-1], ALL)
            }
            started = time.monotonic()
            peers = [("oidc-provider (memory)", args.count, "", "", ALL)]
            if dropped is not None:
                peers.insert(0, ("oidc-provider (PostgreSQL)", args.count, "", libpq_url(url), ALL))
                # Like for like: JWT access tokens (RFC 9068) as carebridge must issue, codes
                # and refresh tokens persisted to PostgreSQL.
                peers.append(
                    ("oidc-provider/jwt (PostgreSQL)", args.count, "1", libpq_url(url), ALL)
                )
            else:
                # Client credentials JWTs are stored nowhere: no store to choose.
                peers.append(("oidc-provider/jwt", 1, "1", "", {"client_credentials"}))
            if args.no_peers:
                peers = []
            # The servers whose database work the bench database's CPU is (PostgreSQL runs).
            persisting = {name for name, _, _, postgres, _ in peers if postgres}
            for name, count, jwt, postgres, grants_run in peers:
                port, where = free_port(), out / f"node-{len(servers)}"
                where.mkdir()
                processes.append(
                    subprocess.Popen(  # noqa: S603
                        [
                            *SERVER_PIN,
                            node,
                            "bench-provider.mjs",
                            str(port),
                            str(count),
                            str(where),
                        ],
                        cwd=PEERS,
                        env={
                            **os.environ,
                            "BENCH_SECRET": secret,
                            "BENCH_VERIFIER": verifier,
                            "BENCH_JWT": jwt,
                            "BENCH_POSTGRES": postgres,
                        },
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                wait_until_up(
                    f"http://127.0.0.1:{port}/.well-known/openid-configuration", processes[-1]
                )
                servers[name] = (port, "bench-client", where / "node-", processes[-1], grants_run)
            if peers:
                took = time.monotonic() - started
                print(f"oidc-provider minted its tokens in {took:.1f} s")
            print(
                f"{args.connections} connections, {args.seconds} s per run, wrk on the same "
                f"machine ({os.cpu_count()} cores); one process per server; "
                + (
                    "carebridge and oidc-provider (PostgreSQL) persist to the same PostgreSQL"
                    if dropped is not None
                    else "carebridge persists to SQLite (no oidc-provider PostgreSQL run)"
                )
                + "; oidc-provider (memory) to its process memory"
            )
            grants = {
                "client_credentials": ("grant_type=client_credentials&scope=messaging.read", None),
                "refresh_token": ("grant_type=refresh_token&refresh_token=TOKEN", "refresh.txt"),
                "authorization_code": (
                    "grant_type=authorization_code&code=TOKEN&"
                    + urlencode({"redirect_uri": REDIRECT, "code_verifier": verifier}),
                    "codes.txt",
                ),
            }
            width = max(len(name) for name in servers)
            for grant, (body, tokens) in grants.items():
                results: dict[str, Result] = {}
                for name, (port, cid, prefix, process, grants_run) in servers.items():
                    if grant not in grants_run or grant not in (args.grant or ALL):
                        continue
                    auth = base64.b64encode(f"{cid}:{secret}".encode()).decode()
                    feed = {
                        "BENCH_BODY": body,
                        "BENCH_AUTH": f"Basic {auth}",
                        "BENCH_TOKENS": f"{prefix}{tokens}" if tokens else "",
                    }
                    path = "oauth2/token" if name.startswith("carebridge") else "token"
                    results[name] = wrk(
                        f"http://127.0.0.1:{port}/{path}",
                        args.seconds,
                        args.connections,
                        feed,
                        script,
                        pid=process.pid,
                        database_cpu=database_cpu,
                    )
                    print(f"{grant:19} {name:{width}} {results[name].line()}")
                if not results:
                    continue
                ours = next(iter(results.values()))
                for name, theirs in list(results.items())[1:]:
                    ours_all = ours.with_database_per_cpu_second
                    theirs_all = theirs.with_database_per_cpu_second if name in persisting else None
                    both = (
                        f", {ours_all / theirs_all:4.2f}x with the database's CPU"
                        if ours_all is not None and theirs_all is not None
                        else ""
                    )
                    print(
                        f"{'':19} carebridge / {name}: {ours.rate / theirs.rate:4.2f}x req/s, "
                        f"{ours.per_cpu_second / theirs.per_cpu_second:4.2f}x req/cpu-s{both}"
                    )
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        database_cpu.close()
        drop(args.database_url, dropped)


if __name__ == "__main__":
    main()
