"""Token endpoint throughput and p99, carebridge next to node oidc-provider (same run).

For each grant (client_credentials, refresh_token, authorization_code) wrk loads one
server at a time for a bounded time: carebridge (`carebridge serve`, one process,
persisting to the real database: PostgreSQL by default) and then oidc-provider 9
(tests/peers/bench-provider.mjs, one node process, its default in-memory store).
Both use client_secret_basic, ES256, PKCE S256 and refresh-token rotation; both have
their codes and refresh tokens minted beforehand, one per request, fed to wrk by a Lua
script. oidc-provider's access tokens are opaque by default: for client credentials a
second oidc-provider process ("oidc-provider/jwt") issues ES256 JWTs as carebridge does.
wrk shares the machine's cores with the server under test: read the figures as a floor. Usage:
    .venv/bin/python bench/token_endpoint.py [--seconds 6] [--connections 16]
        [--count 40000] [--database-url postgresql://...|sqlite]
Needs wrk (apt-get install wrk), node and tests/peers/node_modules.
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
from identity.oidc import clients  # noqa: E402
from identity.oidc.models import (  # noqa: E402
    OidcAuthorizationCode,
    OidcClient,
    OidcRefreshToken,
)

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "tests" / "peers"
DEFAULT_POSTGRES = os.environ.get(
    "CAREBRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIRECT = "https://app.example.org/callback"
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


def wrk(url: str, seconds: int, connections: int, env: dict[str, str], script: Path) -> str:
    result = subprocess.run(  # noqa: S603
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    output = result.stdout
    if result.stderr.strip():
        print(result.stderr.strip()[:500])
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    total = re.search(r"(\d+) requests in", output)
    assert rate and p50 and p99 and total, output
    failed = int(errors[1]) if errors else 0
    return (
        f"{float(rate[1]):8.0f} req/s  p50 {p50[1]:>8}  p99 {p99[1]:>8}  errors {failed}/{total[1]}"
    )


def main() -> None:  # noqa: PLR0915  (a script: set up, run, report)
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--count", type=int, default=40000)
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES)
    args = parser.parse_args()
    node = shutil.which("node")
    if shutil.which("wrk") is None or node is None:
        sys.exit("bench/token_endpoint.py needs wrk and node")
    secret = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    challenge_text = challenge.rstrip(b"=").decode()
    url, dropped = database(args.database_url)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as directory:
            out = Path(directory)
            script = out / "feed.lua"
            script.write_text(LUA)
            cb_port, node_port = free_port(), free_port()
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
                    [str(binary), "serve", "--port", str(cb_port), "--workers", "1"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_until_up(f"http://127.0.0.1:{cb_port}/healthz", processes[-1])
            started = time.monotonic()
            jwt_port = free_port()
            jwt_dir = out / "jwt"
            jwt_dir.mkdir()
            for port, count, where, jwt in (
                (node_port, args.count, out, ""),
                (jwt_port, 1, jwt_dir, "1"),
            ):
                processes.append(
                    subprocess.Popen(  # noqa: S603
                        [node, "bench-provider.mjs", str(port), str(count), str(where)],
                        cwd=PEERS,
                        env={
                            **os.environ,
                            "BENCH_SECRET": secret,
                            "BENCH_VERIFIER": verifier,
                            "BENCH_JWT": jwt,
                        },
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                wait_until_up(
                    f"http://127.0.0.1:{port}/.well-known/openid-configuration", processes[-1]
                )
            print(f"oidc-provider minted its tokens in {time.monotonic() - started:.1f} s")
            backend = "SQLite" if url == "" else "PostgreSQL"
            print(
                f"{args.connections} connections, {args.seconds} s per run, wrk on the same "
                f"machine ({os.cpu_count()} cores); carebridge persists to {backend}, "
                "oidc-provider to memory"
            )
            servers = {
                "carebridge": (cb_port, client_id, out / "cb-"),
                "oidc-provider": (node_port, "bench-client", out / "node-"),
                # Its client credentials tokens as JWTs (ES256), like carebridge's; its
                # default ones are opaque strings kept in memory.
                "oidc-provider/jwt": (jwt_port, "bench-client", jwt_dir / "node-"),
            }
            grants = {
                "client_credentials": ("grant_type=client_credentials&scope=messaging.read", None),
                "refresh_token": ("grant_type=refresh_token&refresh_token=TOKEN", "refresh.txt"),
                "authorization_code": (
                    "grant_type=authorization_code&code=TOKEN&"
                    + urlencode({"redirect_uri": REDIRECT, "code_verifier": verifier}),
                    "codes.txt",
                ),
            }
            for grant, (body, tokens) in grants.items():
                for name, (port, cid, prefix) in servers.items():
                    if name.endswith("/jwt") and grant != "client_credentials":
                        continue
                    auth = base64.b64encode(f"{cid}:{secret}".encode()).decode()
                    feed = {
                        "BENCH_BODY": body,
                        "BENCH_AUTH": f"Basic {auth}",
                        "BENCH_TOKENS": f"{prefix}{tokens}" if tokens else "",
                    }
                    path = "oauth2/token" if name == "carebridge" else "token"
                    figures = wrk(
                        f"http://127.0.0.1:{port}/{path}",
                        args.seconds,
                        args.connections,
                        feed,
                        script,
                    )
                    print(f"{grant:19} {name:17} {figures}")
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        drop(args.database_url, dropped)


if __name__ == "__main__":
    main()
