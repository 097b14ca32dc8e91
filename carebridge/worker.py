"""The background worker: runs periodic jobs until told to stop.

Jobs are plain functions of the runtime; the features add theirs (the SMS outbox) where
the CLI composes the list. A failing job is logged and retried at its next interval; it
never takes the other jobs down with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from carebridge import audit
from carebridge.db import describe_error, unavailable
from carebridge.runtime import Runtime

log = logging.getLogger("carebridge.worker")


@dataclass(frozen=True)
class Job:
    name: str
    interval: float
    run: Callable[[Runtime], None]


def run_jobs(runtime: Runtime, jobs: Sequence[Job], stop: threading.Event) -> None:
    """Run each job now, then every ``interval`` seconds, until ``stop`` is set."""
    due = dict.fromkeys((job.name for job in jobs), 0.0)
    while not stop.is_set():
        for job in jobs:
            if time.monotonic() >= due[job.name]:
                run_once(runtime, job)
                due[job.name] = time.monotonic() + job.interval
        stop.wait(max(0.0, min(due.values()) - time.monotonic()))


def run_once(runtime: Runtime, job: Job) -> bool:
    try:
        job.run(runtime)
    except Exception as exc:
        if unavailable(exc):  # retried at its next interval; no traceback to quote SQL
            log.warning(
                "job failed: database unavailable (%s)",
                describe_error(exc),
                extra={"job": job.name},
            )
        else:
            log.exception("job failed", extra={"job": job.name})
        return False
    return True


def audit_checkpoint(runtime: Runtime) -> None:
    """Verify the audit chain and write its head to the log stream.

    The chain alone cannot show that its newest records were cut off; a head recorded
    outside the database (shipped logs) can. A broken chain is an error for alerting.
    """
    audit.chain_all(runtime.sessions)
    with runtime.sessions() as session:
        result = audit.verify(session)
    if result.intact:
        log.info(
            "audit checkpoint",
            extra={"records": result.records, "head": result.head, "pending": result.pending},
        )
    else:
        log.error(
            "audit chain broken",
            extra={"broken_at": result.broken_at, "reason": result.reason},
        )


def audit_chain(runtime: Runtime) -> None:
    """Link the audit records written since the last run (PostgreSQL; SQLite chains
    inline). The web processes do this too; the chainer lock lets one at a time work."""
    audit.chain_all(runtime.sessions)


AUDIT_CHAIN = Job("audit-chain", 1.0, audit_chain)
AUDIT_CHECKPOINT = Job("audit-checkpoint", 3600.0, audit_checkpoint)
