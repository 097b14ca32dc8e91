"""The outbox: other parts enqueue notifications here, inside their own transaction.

A row written here commits or rolls back with the event that caused it (a new message),
so a notification is never lost to a crash nor sent for an event that did not happen.
The worker (:mod:`sms.delivery`) takes it from there.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from carebridge.db import FromGate
from sms.dispatcher import NEW_MESSAGE, PHONE_VERIFICATION
from sms.models import Notification

__all__ = ["NEW_MESSAGE", "PHONE_VERIFICATION", "enqueue", "enqueue_code", "row"]

_TABLE = cast(Table, Notification.__table__)
_INSERT = insert(_TABLE)


def _values(
    *,
    patient_id: str | FromGate,
    kind: str,
    thread_id: str | None = None,
    contact_point_id: str | None = None,
) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": f"ntf_{secrets.token_urlsafe(16)}",
        "patient_id": patient_id,
        "kind": kind,
        "thread_id": thread_id,
        "contact_point_id": contact_point_id,
        "created_at": now,
        "updated_at": now,
        "state": "pending",
        "attempts": 0,
        "covers": 1,  # this message; a notice that goes counts those merged into it
        "recipient_account_id": None,  # the patient themself (sms.recipients)
    }


def _add(db: Session, **fields: Any) -> str:
    values = _values(**fields)
    db.execute(_INSERT, values)
    return str(values["id"])


def row(
    *, patient_id: str | FromGate, kind: str, thread_id: str | None = None
) -> tuple[Table, dict[str, Any]]:
    """A notification as a row for the caller to insert in its own transaction, along
    with its other rows (carebridge.db.insert_together, or insert_gated, whose gate may
    supply the patient ID): what :func:`enqueue` does, in the caller's statement."""
    return _TABLE, _values(patient_id=patient_id, kind=kind, thread_id=thread_id)


def enqueue(db: Session, *, patient_id: str, kind: str, thread_id: str | None = None) -> str:
    """Add a notification to the caller's transaction; it commits or rolls back with it."""
    return _add(db, patient_id=patient_id, kind=kind, thread_id=thread_id)


def enqueue_code(db: Session, *, patient_id: str, contact_point_id: str) -> str:
    """A verification code for a number the patient just gave (made when it is sent)."""
    return _add(
        db, patient_id=patient_id, kind=PHONE_VERIFICATION, contact_point_id=contact_point_id
    )
