"""The event log and the webhook endpoints (registered by carebridge.models).

An ``event`` row is one thing that happened, as one client is told of it: a change
written by a feature emits one row per client that may hear of it, in the change's own
transaction. ``seq`` orders a client's events (the feed's cursor); ``id`` is the
``webhook-id`` every delivery of it carries, so receivers deduplicate on it. ``data``
holds IDs only, never content.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from carebridge.db import Base
from carebridge.utc import UtcDateTime


class Event(Base):
    __tablename__ = "event"
    # The feed's query: one client's events after a cursor, in order; the purge's by age.
    __table_args__ = (
        Index("ix_event_client_seq", "client_id", "seq"),
        Index("ix_event_created_at", "created_at"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    client_id: Mapped[str] = mapped_column(String(100))
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class WebhookEndpoint(Base):
    """Where one client hears of its events. The signing secrets are sealed under the
    keyring's KEK (a signing secret must be usable, so it cannot be stored hashed);
    after a rotation the previous one signs too until ``previous_until``."""

    __tablename__ = "webhook_endpoint"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(100), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    previous_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    enabled: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
