"""``carebridge worker``: the background jobs process (one or more per deployment)."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType
from typing import Any

from carebridge import outbox, wiring, worker
from carebridge.cli.common import add_parser, require_current_schema
from carebridge.events import operations as events_operations
from carebridge.logs import configure_logging
from carebridge.runtime import Runtime
from carebridge.settings import Role, load_settings, require_production_ready
from identity import one_time_rows, throttle
from identity.oidc import purge as oidc_purge
from messaging import jobs as messaging_jobs
from sms import jobs as sms_jobs

# The jobs this release runs: the plumbing's, identity's, each feature's own list, then
# the one outbox job, delivering every channel the composition root wired (SMS, e-mail).
JOBS = (
    worker.AUDIT_CHAIN,
    worker.AUDIT_CHECKPOINT,
    worker.Job("throttle-purge", 3600.0, throttle.purge_stale),
    worker.Job("oidc-purge", 3600.0, oidc_purge.purge_expired),
    worker.Job("identity-one-time-purge", 3600.0, one_time_rows.purge_job),
    *messaging_jobs.JOBS,
    *sms_jobs.JOBS,
    wiring.OUTBOX,
    outbox.PURGE,
    events_operations.PURGE,
)


def register(commands: Any) -> None:
    parser = add_parser(commands, "worker", "Run background jobs until SIGTERM or SIGINT.")
    parser.add_argument("--once", action="store_true", help="run each job once, then exit")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    require_production_ready(settings)
    configure_logging(settings.log_level, settings.log_format)
    runtime = Runtime.build(settings, Role.WORKER)
    try:
        runtime.keyring  # noqa: B018  (fail now on a missing or corrupt keyring)
        require_current_schema(runtime)
        if args.once:
            results = [worker.run_once(runtime, job) for job in JOBS]
            return 0 if all(results) else 1
        stop = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        worker.run_jobs(runtime, JOBS, stop)
    finally:
        runtime.close()
    return 0
