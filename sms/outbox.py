"""The outbox: other parts enqueue notifications here, inside their own transaction."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from sms.models import Notification

NEW_MESSAGE = "new_message"


def enqueue(db: Session, *, patient_id: str, kind: str, thread_id: str | None = None) -> str:
    """Add a notification to the caller's transaction; it commits or rolls back with it."""
    notification = Notification(
        id=f"ntf_{secrets.token_urlsafe(16)}",
        patient_id=patient_id,
        kind=kind,
        thread_id=thread_id,
        created_at=datetime.now(UTC),
        state="pending",
    )
    db.add(notification)
    return notification.id
