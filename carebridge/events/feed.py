"""The event feed: a client's events after a cursor, for apps without a public endpoint.

A cursor is opaque to the app and bound to it: ``<seq>.<mac>``, the MAC a keyed hash of
the client ID and the position, so a cursor another client was given (or one made up)
is refused, not read from. Events are listed only once they are a moment old
(``SETTLE``): a transaction that took its sequence number before another but commits
after it would otherwise be skipped by a reader already past it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from carebridge.events.models import Event
from carebridge.keyring import Keyring

CURSOR_PURPOSE = "event-feed-cursor"
SETTLE = timedelta(seconds=1)
PAGE = 100


class BadCursorError(Exception):
    """A cursor this client was not given."""


@dataclass(frozen=True)
class FeedEvent:
    id: str
    type: str
    created_at: datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class Batch:
    events: list[FeedEvent]
    cursor: str  # where the next request starts (the same one when nothing was new)


def _mac(keyring: Keyring, client_id: str, seq: int) -> str:
    return keyring.lookup_hash(CURSOR_PURPOSE, f"{client_id}\n{seq}")[:32]


def cursor_for(keyring: Keyring, client_id: str, seq: int) -> str:
    return f"{seq}.{_mac(keyring, client_id, seq)}"


def position(keyring: Keyring, client_id: str, cursor: str | None) -> int:
    """The sequence number a cursor stands for (0: from the start)."""
    if not cursor:
        return 0
    seq_text, _, mac = cursor.partition(".")
    # ASCII digits only: str.isdigit() holds for "²", which int() refuses.
    if not (seq_text.isascii() and seq_text.isdigit()) or len(seq_text) > 18:
        raise BadCursorError
    seq = int(seq_text)
    if not hmac.compare_digest(mac.encode(), _mac(keyring, client_id, seq).encode()):
        raise BadCursorError
    return seq


def read(
    db: Session, keyring: Keyring, client_id: str, after: int, now: datetime, *, limit: int = PAGE
) -> Batch:
    rows = db.scalars(
        select(Event)
        .where(Event.client_id == client_id, Event.seq > after, Event.created_at <= now - SETTLE)
        .order_by(Event.seq)
        .limit(limit)
    ).all()
    events = [
        FeedEvent(id=row.id, type=row.type, created_at=row.created_at, data=dict(row.data))
        for row in rows
    ]
    last = rows[-1].seq if rows else after
    return Batch(events, cursor_for(keyring, client_id, last))
