"""``carebridge serve``: run the web service under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from typing import Any

import uvicorn

from carebridge import migrate
from carebridge.cli.common import add_parser, require_current_schema
from carebridge.db import safe_url
from carebridge.logs import configure_logging
from carebridge.runtime import Runtime
from carebridge.settings import load_settings, require_production_ready

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
    parser.set_defaults(handler=serve)


def prepare(runtime: Runtime) -> None:
    """Keys first (development generates them); then the schema: SQLite (the embedded
    default) migrates itself, PostgreSQL is migrated by the operator."""
    runtime.keyring  # noqa: B018
    if runtime.settings.uses_sqlite:
        migrate.upgrade(runtime.engine)
    else:
        require_current_schema(runtime)


def serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    require_production_ready(settings)
    configure_logging(settings.log_level, settings.log_format)
    runtime = Runtime.build(settings)
    try:
        prepare(runtime)
    finally:
        runtime.close()
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
    return 0
