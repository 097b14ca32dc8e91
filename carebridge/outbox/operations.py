"""What operators see and do (``carebridge notifications``): counts by channel and
state, the dead letters, one row, putting a dead letter back. IDs and code words only:
sealed content is never opened here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.outbox.models import DEAD, PENDING, SENDING, OutboxMessage
from carebridge.runtime import Runtime


@dataclass(frozen=True)
class Status:
    by_channel_state: dict[tuple[str, str], int]
    oldest_due: datetime | None  # the longest-waiting pending row's due time
    stale_sending: int  # claims whose lease ran out (a worker died mid-delivery)


def status(runtime: Runtime, now: datetime) -> Status:
    with runtime.sessions() as db:
        counts = db.execute(
            select(OutboxMessage.channel, OutboxMessage.state, func.count()).group_by(
                OutboxMessage.channel, OutboxMessage.state
            )
        ).tuples()
        by = {(str(channel), str(state)): int(count) for channel, state, count in counts}
        oldest = db.scalar(
            select(func.min(OutboxMessage.due_at)).where(OutboxMessage.state == PENDING)
        )
        stale = db.scalar(
            select(func.count()).where(OutboxMessage.state == SENDING, OutboxMessage.due_at <= now)
        )
    return Status(by, oldest, int(stale or 0))


@dataclass(frozen=True)
class Row:
    id: str
    channel: str
    kind: str
    payload: dict[str, str]
    state: str
    attempts: int
    last_error: str | None
    due_at: datetime
    created_at: datetime


def _row(message: OutboxMessage) -> Row:
    return Row(
        id=message.id,
        channel=message.channel,
        kind=message.kind,
        payload={str(k): str(v) for k, v in message.payload.items()},
        state=message.state,
        attempts=message.attempts,
        last_error=message.last_error,
        due_at=message.due_at,
        created_at=message.created_at,
    )


def detail(runtime: Runtime, message_id: str) -> Row | None:
    with runtime.sessions() as db:
        message = db.get(OutboxMessage, message_id)
        return None if message is None else _row(message)


def dead_letters(runtime: Runtime, limit: int = 50) -> list[Row]:
    """The most recent dead letters first."""
    with runtime.sessions() as db:
        rows = db.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.state == DEAD)
            .order_by(OutboxMessage.updated_at.desc())
            .limit(limit)
        )
        return [_row(message) for message in rows]


def retry(runtime: Runtime, message_id: str, *, actor: str, now: datetime) -> str | None:
    """Put a dead letter back, due now with a fresh count of attempts; returns its
    former state, or None when no dead letter has this ID."""
    with transaction(runtime.sessions) as db:
        message = db.get(OutboxMessage, message_id, with_for_update=True)
        if message is None or message.state != DEAD:
            return None
        message.state, message.due_at, message.attempts = PENDING, now, 0
        message.updated_at = now
        audit.append(
            db,
            actor=actor,
            action="outbox.retry",
            outcome=Outcome.ALLOWED,
            target=f"outbox:{message.id}",
            request_id=None,
        )
    return DEAD
