"""The notification outbox and everything the dispatcher decides with."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from carebridge.db import Base


class Notification(Base):
    """One thing to tell a patient, written in the transaction of the event causing it.

    It carries IDs only (patient, thread): never content.
    """

    __tablename__ = "notification"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    thread_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
