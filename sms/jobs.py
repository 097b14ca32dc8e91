"""sms's background jobs, for `carebridge worker` to run."""

from __future__ import annotations

from carebridge.worker import Job

JOBS: tuple[Job, ...] = ()
