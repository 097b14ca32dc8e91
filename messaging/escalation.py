"""Escalation of patient-started threads nobody on the team has answered in time.

A thread a patient started, on a team with ``escalate_after_seconds``, that has no
message from staff or the team's app (the automatic first reply does not count) that
long after it was opened is marked ``escalated_at``, audited, once. Then the hook runs:
today it tells nobody (no e-mail, no text); the team admin role of a later wave will be
notified through it (:data:`ESCALATION_HOOKS`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Exists, exists, select
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from messaging.models import CareTeam, Message, Thread
from messaging.threads import AUTO_REPLY_AUTHOR

# Called in the escalation's transaction with (db, thread ID, care team ID): the place
# for "notify the team admin" once that role exists. IDs only, never content.
EscalationHook = Callable[[Session, str, str], None]
ESCALATION_HOOKS: list[EscalationHook] = []
BATCH = 500


def _answered() -> Exists:
    return exists().where(
        Message.thread_id == Thread.id,
        Message.author_kind.in_(("staff", "app")),
        Message.author_id != AUTO_REPLY_AUTHOR,
    )


def escalate_due(runtime: Runtime, *, now: datetime | None = None) -> list[str]:
    """Escalate every due thread, team by team (each team's delay is its own); returns
    their IDs."""
    moment = now or utcnow()
    escalated: list[str] = []
    with runtime.sessions() as db:
        teams = db.execute(
            select(CareTeam.id, CareTeam.escalate_after_seconds).where(
                CareTeam.escalate_after_seconds.is_not(None)
            )
        ).all()
    for team_id, seconds in teams:
        cutoff = moment - timedelta(seconds=seconds)
        while True:
            batch = _escalate_batch(runtime, team_id, cutoff, moment)
            escalated.extend(batch)
            if len(batch) < BATCH:
                break
    return escalated


def _escalate_batch(
    runtime: Runtime, team_id: str, cutoff: datetime, moment: datetime
) -> list[str]:
    with transaction(runtime.sessions) as db:
        due = db.scalars(
            select(Thread)
            .where(
                Thread.care_team_id == team_id,
                Thread.started_by == "patient",
                Thread.escalated_at.is_(None),
                Thread.status == "open",
                Thread.data_key_wrapped.is_not(None),
                Thread.created_at <= cutoff,
                ~_answered(),
            )
            .order_by(Thread.created_at, Thread.id)
            .limit(BATCH)
            # Two workers never escalate (and audit) the same thread twice.
            .with_for_update(skip_locked=True)
        ).all()
        for thread in due:
            thread.escalated_at = moment
            audit.append(
                db,
                actor="worker",
                action="messaging.thread.escalate",
                outcome=Outcome.ALLOWED,
                target=f"thread:{thread.id}",
            )
            for hook in ESCALATION_HOOKS:
                hook(db, thread.id, team_id)
        return [thread.id for thread in due]
