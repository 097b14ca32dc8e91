"""``carebridge serve``: run the web service under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
from typing import Any

import uvicorn

from carebridge import migrate, worker
from carebridge.cli.common import add_parser, require_current_schema
from carebridge.db import safe_url
from carebridge.demo import seed as demo_seed
from carebridge.keyring import KeyringError
from carebridge.logs import configure_logging
from carebridge.runtime import Runtime
from carebridge.settings import Role, Settings, load_settings, require_production_ready
from messaging import keys as message_keys

log = logging.getLogger("carebridge.serve")


def _port(value: str) -> int:
    port = int(value) if value.isdigit() else -1
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"invalid port {value!r} (1-65535)")
    return port


def _workers(value: str) -> int:
    count = int(value) if value.isdigit() else 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"invalid worker count {value!r} (1 or more)")
    return count


def register(commands: Any) -> None:
    parser = add_parser(commands, "serve", "Serve the web application.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=_workers, default=1, help="processes (default 1)")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="seed synthetic demo data, serve the demo provider app and run the worker "
        "in-process (refused in production)",
    )
    parser.set_defaults(handler=serve)


def prepare(runtime: Runtime) -> None:
    """Keys first (development generates them); then the schema: SQLite (the embedded
    default) migrates itself, PostgreSQL is migrated by the operator."""
    runtime.keyring  # noqa: B018
    if runtime.settings.uses_sqlite:
        migrate.upgrade(runtime.engine, settings=runtime.settings)
    else:
        require_current_schema(runtime)
    # Thread keys wrapped by a key-encryption key this keyring lacks (a wrong keyring
    # file, a KEK retired too early) would make every such thread unreadable: refuse.
    problems = message_keys.problems(runtime)
    if problems:
        raise KeyringError("; ".join(problems))


def _demo_environment(args: argparse.Namespace) -> None:
    # The uvicorn workers build their settings from the environment: say it there.
    os.environ["CAREBRIDGE_DEMO"] = "true"
    # The demo provider app's webhook receiver is this server (usually on loopback);
    # demo mode is refused in production, and so is this setting.
    os.environ.setdefault("CAREBRIDGE_WEBHOOK_ALLOW_LOOPBACK", "true")
    if "CAREBRIDGE_ISSUER" not in os.environ:
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host  # noqa: S104
        os.environ["CAREBRIDGE_ISSUER"] = f"http://{host}:{args.port}"


def _start_demo_worker(settings: Settings) -> tuple[threading.Event, threading.Thread]:
    """The demo's notifications are delivered by the worker's jobs, in this process, so
    the newcomer sees the SMS in this terminal without starting a second command."""
    from carebridge.cli.worker import JOBS  # noqa: PLC0415  (only demo mode needs it)

    stop = threading.Event()
    runtime = Runtime.build(settings, Role.WORKER)

    def run() -> None:
        try:
            worker.run_jobs(runtime, JOBS, stop)
        finally:
            runtime.close()

    thread = threading.Thread(target=run, name="demo-worker", daemon=True)
    thread.start()
    return stop, thread


def serve(args: argparse.Namespace) -> int:
    if args.demo:
        _demo_environment(args)
    settings = load_settings()
    require_production_ready(settings)
    configure_logging(settings.log_level, settings.log_format)
    # Migrating (SQLite) and seeding before serving are an operator's command's work.
    runtime = Runtime.build(settings, Role.CLI)
    try:
        prepare(runtime)
        if settings.demo:
            config = demo_seed.seed(runtime)
            print(demo_seed.instructions(config), flush=True)
    finally:
        runtime.close()
    demo_worker = _start_demo_worker(settings) if settings.demo else None
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="carebridge-metrics-")
    log.info(
        "carebridge %s serving %s on http://%s:%d with %s",
        settings.env.value,
        settings.issuer,
        args.host,
        args.port,
        safe_url(settings.effective_database_url),
    )
    uvicorn.run(
        "carebridge.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_config=None,
        access_log=False,
        server_header=False,
    )
    if demo_worker is not None:
        stop, thread = demo_worker
        stop.set()
        thread.join(timeout=10)
    return 0
