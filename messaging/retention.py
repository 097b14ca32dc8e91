"""Retention (crypto-shredding threads past their care team's period) and legal hold.

Shredding deletes the thread's wrapped data key: every ciphertext of the thread, in the
database and in its backups taken from then on, no longer opens. The rows stay as
tombstones (IDs, times, sizes), which keeps the audit trail's targets meaningful.
A thread under legal hold is never shredded until an operator clears the hold.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.runtime import Runtime
from messaging.models import CareTeam, Thread

BATCH = 200
MAX_REASON = 500


class RetentionError(Exception):
    """An operator's request that cannot be carried out; the message is one line."""


def shred(db: Session, thread: Thread, *, actor: str, moment: datetime) -> None:
    thread.data_key_wrapped = None
    thread.kek_id = None
    thread.shredded_at = moment
    audit.append(
        db,
        actor=actor,
        action="messaging.thread.shred",
        outcome=Outcome.ALLOWED,
        target=f"thread:{thread.id}",
    )


def expire(runtime: Runtime, *, now: datetime | None = None, actor: str = "worker") -> int:
    """Crypto-shred every thread whose last message is older than its care team's
    retention period, except those under legal hold. Returns how many were shredded."""
    moment = now or datetime.now(UTC)
    total = 0
    with runtime.sessions() as db:
        teams = [(team.id, team.retention_days) for team in db.scalars(select(CareTeam))]
    for team_id, days in teams:
        cutoff = moment - timedelta(days=days)
        while True:
            with transaction(runtime.sessions) as db:
                query = (
                    select(Thread)
                    .where(
                        Thread.care_team_id == team_id,
                        Thread.data_key_wrapped.is_not(None),
                        Thread.legal_hold.is_(False),
                        Thread.last_message_at < cutoff,
                    )
                    .order_by(Thread.id)
                    .limit(BATCH)
                    .with_for_update(skip_locked=True)
                )
                batch = list(db.scalars(query))
                for thread in batch:
                    shred(db, thread, actor=actor, moment=moment)
            total += len(batch)
            if len(batch) < BATCH:
                break
    return total


def _reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if not reason:
        raise RetentionError("a reason is required (it is kept with the hold)")
    if len(reason) > MAX_REASON:
        raise RetentionError(f"the reason is over {MAX_REASON} characters")
    return reason


def _targets(db: Session, *, thread_ids: list[str], patient_id: str | None) -> list[Thread]:
    found: list[Thread] = []
    if thread_ids:
        found += list(db.scalars(select(Thread).where(Thread.id.in_(thread_ids))))
        missing = set(thread_ids) - {t.id for t in found}
        if missing:
            raise RetentionError(f"no such thread: {sorted(missing)[0]}")
    if patient_id:
        found += list(db.scalars(select(Thread).where(Thread.patient_id == patient_id)))
    return found


def set_hold(
    runtime: Runtime,
    *,
    thread_ids: list[str],
    patient_id: str | None,
    reason: str,
    actor: str = "operator",
    hold: bool = True,
) -> int:
    """Put threads (by ID, or all of a patient's) under legal hold, or release them."""
    reason = _reason(reason)
    with transaction(runtime.sessions) as db:
        threads = _targets(db, thread_ids=thread_ids, patient_id=patient_id)
        if not threads:
            raise RetentionError("no threads matched")
        for thread in threads:
            thread.legal_hold = hold
            thread.legal_hold_reason = reason if hold else None
            audit.append(
                db,
                actor=actor,
                action="messaging.legal_hold.set" if hold else "messaging.legal_hold.clear",
                outcome=Outcome.ALLOWED,
                target=f"thread:{thread.id}",
            )
    return len(threads)
