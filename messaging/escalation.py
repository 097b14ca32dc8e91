"""Escalation of patient-started threads nobody on the team has answered in time.

A thread a patient started, on a team with ``escalate_after_seconds``, that has no
message from staff or the team's app (the automatic first reply does not count) that
long after it was opened is marked ``escalated_at``, audited, once. In the same
transaction the team's admins are e-mailed one notice per batch (messaging.admin_notices):
that a conversation in the team's queue waited longer than the team's limit, nothing
more (no patient, subject or topic: a topic label can reveal a condition). The care
team's thread list shows such threads first while they wait (messaging.waiting).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.i18n import ngettext
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from messaging import admin_notices
from messaging.models import CareTeam, Thread
from messaging.waiting import answered

BATCH = 500


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
                ~answered(),
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
        if due:
            _tell_admins(db, runtime, team_id, len(due))
        return [thread.id for thread in due]


def _tell_admins(db: Session, runtime: Runtime, team_id: str, count: int) -> None:
    text = ngettext(
        "A conversation in your care team's queue has waited longer than the team's limit"
        " for an answer.\n\nOpen your team's messages to answer it.\n\n{service}\n",
        "{count} conversations in your care team's queue have waited longer than the"
        " team's limit for an answer.\n\nOpen your team's messages to answer them.\n\n"
        "{service}\n",
        count,
    ).format(count=count, service=runtime.settings.email_sender_name)
    subject = ngettext(
        "A conversation waits for your care team's answer",
        "Conversations wait for your care team's answer",
        count,
    )
    admin_notices.email_team_admins(db, runtime, team_id, subject=subject, text=text)
