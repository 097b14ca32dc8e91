"""What operators do with notifications (``carebridge notifications``): counts, retries,
the opt-out list. Numbers are read from standard input and never printed or audited."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.runtime import Runtime
from sms import phone
from sms.models import Notification, OptOut, SendAttempt

RETRYABLE_STATES = ("failed", "undelivered", "suppressed")


@dataclass(frozen=True)
class Status:
    by_state: dict[str, int]
    by_reason: dict[str, int]
    oldest_due: datetime | None
    stale_sending: int


def status(runtime: Runtime, now: datetime) -> Status:
    with runtime.sessions() as db:
        by_state = dict(
            db.execute(select(Notification.state, func.count()).group_by(Notification.state))
            .tuples()
            .all()
        )
        by_reason = dict(
            db.execute(
                select(Notification.reason, func.count())
                .where(Notification.reason.is_not(None))
                .group_by(Notification.reason)
            )
            .tuples()
            .all()
        )
        oldest = db.scalar(
            select(func.min(Notification.created_at)).where(Notification.state == "pending")
        )
        stale = db.scalar(
            select(func.count()).where(
                Notification.state == "sending", Notification.next_attempt_at <= now
            )
        )
    return Status(
        by_state={str(k): int(v) for k, v in by_state.items()},
        by_reason={str(k): int(v) for k, v in by_reason.items()},
        oldest_due=oldest,
        stale_sending=int(stale or 0),
    )


@dataclass(frozen=True)
class Attempt:
    id: str
    channel: str
    status: str
    error_code: int | None
    started_at: datetime | None
    answered_by: str | None


@dataclass(frozen=True)
class Detail:
    notification: Notification
    attempts: list[Attempt]


def detail(runtime: Runtime, notification_id: str) -> Detail | None:
    """One notification and its attempts: IDs, states and codes, never a number or text."""
    with runtime.sessions() as db:
        row = db.get(Notification, notification_id)
        if row is None:
            return None
        query = (
            select(SendAttempt)
            .where(SendAttempt.notification_id == notification_id)
            .order_by(SendAttempt.started_at)
        )
        attempts = [
            Attempt(
                a.id,
                a.channel,
                a.status,
                a.error_code,
                a.started_at,
                a.answered_by,
            )
            for a in db.scalars(query)
        ]
        db.expunge(row)
    return Detail(row, attempts)


def retry(runtime: Runtime, notification_id: str, *, actor: str, now: datetime) -> str | None:
    """Put a finished notification back in the outbox (the dispatcher decides again).

    Returns its former state, or None if there is no such notification in a final state.
    """
    with transaction(runtime.sessions) as db:
        row = db.get(Notification, notification_id, with_for_update=True)
        if row is None or row.state not in RETRYABLE_STATES:
            return None
        former = row.state
        row.state, row.next_attempt_at, row.attempts = "pending", None, 0
        row.updated_at = now
        audit.append(
            db,
            actor=actor,
            action="sms.notification.retry",
            outcome=Outcome.ALLOWED,
            target=f"notification:{row.id}",
            request_id=None,
        )
    return former


def opt_out_counts(runtime: Runtime) -> dict[str, int]:
    with runtime.sessions() as db:
        query = select(OptOut.source, func.count()).group_by(OptOut.source)
        rows = db.execute(query).tuples().all()
        return {str(source): int(count) for source, count in rows}


def set_opt_out(runtime: Runtime, e164: str, *, listed: bool, actor: str, now: datetime) -> bool:
    """Add a number to, or take it off, our opt-out list; False if nothing changed."""
    number_hash = phone.number_hash(runtime.keyring, e164)
    with transaction(runtime.sessions) as db:
        row = db.get(OptOut, number_hash)
        if listed == (row is not None):
            return False
        if listed:
            db.add(OptOut(number_hash=number_hash, opted_out_at=now, source="operator"))
        else:
            db.delete(row)
        audit.append(
            db,
            actor=actor,
            action="sms.optout.operator" if listed else "sms.optin.operator",
            outcome=Outcome.ALLOWED,
            target="number:hashed",
            request_id=None,
        )
    return True
