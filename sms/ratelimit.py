"""The per-sender rate limit, shared by every worker through one row per sender.

Each send reserves the sender's next free slot (``next_at`` moves on by 1/rate) in a
short transaction, then waits for its slot. PostgreSQL serialises the reservations on
the row lock, SQLite on its database lock, so N workers together keep the configured
rate (a US long code: 1 segment a second; toll-free 3; short codes 100+).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from carebridge.db import transaction
from carebridge.runtime import Runtime
from sms.models import SenderSlot


def _ensure_row(db: Session, sender: str, now: datetime) -> None:
    dialect = postgresql if db.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(SenderSlot).values(sender=sender, next_at=now)
    db.execute(statement.on_conflict_do_nothing(index_elements=["sender"]))


def reserve(
    runtime: Runtime, sender: str, rate_per_second: float, now: datetime, count: int = 1
) -> float:
    """Reserve ``count`` consecutive slots; seconds to wait before the first may go (the
    others follow 1/rate apart)."""
    interval = timedelta(seconds=count / rate_per_second)
    with transaction(runtime.sessions) as db:
        slot = db.get(SenderSlot, sender, with_for_update=True)
        if slot is None:
            _ensure_row(db, sender, now)
            slot = db.get(SenderSlot, sender, with_for_update=True, populate_existing=True)
            assert slot is not None  # noqa: S101  (just inserted, or there already)
        start = max(slot.next_at or now, now)
        slot.next_at = start + interval
    return (start - now).total_seconds()
