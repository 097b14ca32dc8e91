"""Purging identity's one-time rows once no rule reads them: the worker's
``identity-one-time-purge`` job (carebridge/cli/worker.py), hourly.

Each table keeps a row while a rule may still read it, then :data:`GRACE` more (so a
person holding a link just past its expiry gets "expired", not "unknown", and an
operator looking into a complaint finds it):

- ``email_verification``: until it is used or expires.
- ``password_reset``: an unused link until it expires. A used one is the record of the
  account's last reset, which refuses recovery by date of birth for 7 days
  (``identity.recovery.RECENT_CHANGE``) and stops a recovery request whose wait it falls
  in (the wait is at most 14 days): kept :data:`KEEP_USED_RESET`, longer than both, and
  for as long as the account has an open recovery request. A waiting request can be
  completed any time after its wait, and completing reads every reset since the request
  began: purged earlier, a reset made during the wait (the owner taking the account back)
  would no longer stop it.
- ``email_change``: a pending change while its verification can still confirm it (it
  expires with it: ``CAREBRIDGE_EMAIL_VERIFICATION_HOURS``); a completed one while its
  7-day undo link works (``undo_until``; the old address it holds goes with it).
- ``recovery_request``: an open one (started or waiting) is never purged; an ended one
  (completed or cancelled) from its ``ended_at``.

Deleted in batches of :data:`BATCH` rows, each its own short transaction, so a large
backlog never holds locks (or SQLite's one writer) for long.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, or_, select
from sqlalchemy.orm import InstrumentedAttribute

from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity import recovery
from identity.models import EmailChange, EmailVerification, PasswordReset, RecoveryRequest

log = logging.getLogger("identity.one_time_rows")

GRACE = timedelta(days=1)
# Longer than RECENT_CHANGE (7 days) and than the longest recovery wait (14 days, the
# settings' cap on CAREBRIDGE_RECOVERY_WAIT_HOURS) plus its link's life.
KEEP_USED_RESET = timedelta(days=30)
BATCH = 500


def _conditions(runtime: Runtime, now: datetime) -> list[tuple[Any, ColumnElement[bool]]]:
    """(table, what may go) for each table: the rules above."""
    before = now - GRACE
    pending_for = timedelta(hours=runtime.settings.email_verification_hours)
    return [
        (
            EmailVerification,
            or_(EmailVerification.expires_at < before, EmailVerification.used_at < before),
        ),
        (
            PasswordReset,
            or_(
                and_(PasswordReset.used_at.is_(None), PasswordReset.expires_at < before),
                and_(
                    PasswordReset.used_at < now - KEEP_USED_RESET - GRACE,
                    ~exists().where(
                        RecoveryRequest.account_id == PasswordReset.account_id,
                        RecoveryRequest.state.in_(recovery.OPEN),
                    ),
                ),
            ),
        ),
        (
            EmailChange,
            or_(
                and_(
                    EmailChange.completed_at.is_(None),
                    EmailChange.created_at < before - pending_for,
                ),
                and_(EmailChange.completed_at.is_not(None), EmailChange.undo_until < before),
                and_(
                    EmailChange.completed_at < before,
                    EmailChange.undo_until.is_(None),
                ),
            ),
        ),
        (
            RecoveryRequest,
            and_(
                RecoveryRequest.state.not_in(recovery.OPEN),
                RecoveryRequest.ended_at < before,
            ),
        ),
    ]


def _purge_table(runtime: Runtime, model: Any, condition: ColumnElement[bool]) -> int:
    key: InstrumentedAttribute[str] = model.id
    purged = 0
    while True:
        with transaction(runtime.sessions) as db:
            ids = list(db.scalars(select(key).where(condition).order_by(key).limit(BATCH)))
            if ids:
                db.execute(
                    delete(model).where(key.in_(ids)).execution_options(synchronize_session=False)
                )
        purged += len(ids)
        if len(ids) < BATCH:
            return purged


def purge(runtime: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Delete what no rule reads any more; returns the rows deleted per table."""
    moment = now or utcnow()
    counts = {
        model.__tablename__: _purge_table(runtime, model, condition)
        for model, condition in _conditions(runtime, moment)
    }
    if any(counts.values()):
        log.info("one-time rows purged", extra={"purged": counts})
    return counts


def purge_job(runtime: Runtime) -> None:
    purge(runtime)
