"""messaging's background jobs, for `carebridge worker` to run."""

from __future__ import annotations

from carebridge.runtime import Runtime
from carebridge.worker import Job
from messaging import escalation, keys, retention

DAY = 24 * 3600.0


def expire(runtime: Runtime) -> None:
    retention.expire(runtime, actor="worker")


def escalate(runtime: Runtime) -> None:
    escalation.escalate_due(runtime)


# Often enough that an escalation comes within minutes of its due time.
ESCALATE_EVERY = 60.0

JOBS: tuple[Job, ...] = (
    # Run first at start: a keyring without the KEKs the stored thread keys need is an error.
    Job("messaging-key-check", DAY, keys.check_at_start),
    Job("messaging-expire", DAY, expire),
    Job("messaging-escalate", ESCALATE_EVERY, escalate),
)
