"""What operators do with webhook deliveries: list the dead letters, put them back.

Dead letters are the outbox's rows of the ``webhook`` channel (carebridge.outbox); a
replay puts one back due now with a fresh count of attempts, or every one of an
endpoint (after its receiver is fixed, or the endpoint enabled again). Audited.
Events older than ``CAREBRIDGE_EVENT_RETENTION_DAYS`` are purged (:data:`PURGE`), and
with them what could still be replayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.events.emit import CHANNEL
from carebridge.events.models import Event
from carebridge.outbox import DEAD, PENDING, OutboxMessage
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from carebridge.worker import Job


@dataclass(frozen=True)
class DeadDelivery:
    id: str  # the outbox row
    endpoint_id: str
    event_id: str
    event_type: str
    attempts: int
    last_error: str | None
    failed_at: datetime


def _dead(db: Session, endpoint_id: str | None, limit: int) -> list[OutboxMessage]:
    query = select(OutboxMessage).where(
        OutboxMessage.channel == CHANNEL, OutboxMessage.state == DEAD
    )
    if endpoint_id is not None:
        query = query.where(OutboxMessage.payload["endpoint"].as_string() == endpoint_id)
    return list(db.scalars(query.order_by(OutboxMessage.updated_at.desc()).limit(limit)))


def dead_deliveries(
    db: Session, *, endpoint_id: str | None = None, limit: int = 100
) -> list[DeadDelivery]:
    return [
        DeadDelivery(
            id=row.id,
            endpoint_id=str(row.payload.get("endpoint", "")),
            event_id=str(row.payload.get("event", "")),
            event_type=row.kind,
            attempts=row.attempts,
            last_error=row.last_error,
            failed_at=row.updated_at,
        )
        for row in _dead(db, endpoint_id, limit)
    ]


def _put_back(db: Session, row: OutboxMessage, now: datetime, actor: str) -> None:
    row.state, row.due_at, row.attempts, row.updated_at = PENDING, now, 0, now
    audit.append(
        db,
        actor=actor,
        action="webhook.replay",
        outcome=Outcome.ALLOWED,
        target=f"outbox:{row.id}",
        request_id=None,
    )


def replay(db: Session, delivery_id: str, *, actor: str) -> bool:
    """One dead delivery due again now; False when there is no such dead delivery."""
    row = db.get(OutboxMessage, delivery_id, with_for_update=True)
    if row is None or row.channel != CHANNEL or row.state != DEAD:
        return False
    _put_back(db, row, utcnow(), actor)
    return True


def replay_endpoint(db: Session, endpoint_id: str, *, actor: str) -> int:
    """Every dead delivery of an endpoint due again now; returns how many."""
    now = utcnow()
    rows = _dead(db, endpoint_id, limit=100_000)
    for row in rows:
        _put_back(db, row, now, actor)
    return len(rows)


def purge(runtime: Runtime, now: datetime | None = None) -> int:
    cutoff = (now or utcnow()) - timedelta(days=runtime.settings.event_retention_days)
    with transaction(runtime.sessions) as db:
        result: Any = db.execute(delete(Event).where(Event.created_at < cutoff))
        return int(result.rowcount or 0)


def _purge(runtime: Runtime) -> None:
    purge(runtime)


PURGE = Job("event-purge", 3600.0, _purge)
