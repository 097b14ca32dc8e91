"""The outbox's table: one row per thing to deliver, on any channel.

A row holds IDs only in ``payload``. What must travel but must not sit in the database
in clear (an e-mail address and its text, a one-time code and its number) is sealed
under the keyring in ``sealed``, bound to the row, and wiped once delivered.

States: pending (due at ``due_at``) → sending (claimed; ``due_at`` is the end of the
claim's lease: a worker that died lets the row come due again) → done; or dead (a
permanent error, or out of attempts: the dead letters an operator looks at and may
put back with ``carebridge notifications retry``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from carebridge.db import Base
from carebridge.utc import UtcDateTime

PENDING = "pending"
SENDING = "sending"
DONE = "done"
DEAD = "dead"


class OutboxMessage(Base):
    __tablename__ = "outbox"
    # The claim's query: due rows of a state, oldest due first.
    __table_args__ = (Index("ix_outbox_state_due_at", "state", "due_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # Which handler delivers it (sms, email, ...) and what it is to that handler.
    channel: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(12))
    due_at: Mapped[datetime] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer)
    # Why the last attempt did not deliver it (a short code word, never content).
    last_error: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
