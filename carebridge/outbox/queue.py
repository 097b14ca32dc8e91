"""Putting rows in the outbox, inside the caller's transaction.

A row written here commits or rolls back with the event that caused it, so nothing is
lost to a crash nor sent for an event that did not happen.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from carebridge.keyring import Keyring, associated_data
from carebridge.outbox.models import PENDING, OutboxMessage

_TABLE = cast(Table, OutboxMessage.__table__)
_INSERT = insert(_TABLE)


def new_id() -> str:
    return f"obx_{secrets.token_urlsafe(16)}"


def _aad(message_id: str, channel: str, kind: str) -> bytes:
    # Bound to its row: a sealed blob copied to another row does not open there.
    return associated_data("outbox", message_id, channel, kind)


def seal(
    keyring: Keyring, message_id: str, channel: str, kind: str, content: Mapping[str, str]
) -> bytes:
    return keyring.encrypt(json.dumps(dict(content)).encode(), _aad(message_id, channel, kind))


def open_sealed(
    keyring: Keyring, message_id: str, channel: str, kind: str, blob: bytes
) -> dict[str, str]:
    loaded = json.loads(keyring.decrypt(blob, _aad(message_id, channel, kind)))
    return {str(key): str(value) for key, value in loaded.items()}


def row(
    *,
    channel: str,
    kind: str,
    payload: Mapping[str, str],
    content: Mapping[str, str] | None = None,
    keyring: Keyring | None = None,
    due_at: datetime | None = None,
) -> tuple[Table, dict[str, Any]]:
    """An outbox row for the caller to insert with its other rows (insert_together).

    ``payload`` holds IDs only; ``content`` (what must not be stored in clear: an
    address, a code, a text) is sealed under ``keyring``.
    """
    now = datetime.now(UTC)
    message_id = new_id()
    sealed = None
    if content is not None:
        if keyring is None:
            raise ValueError("sealed content needs the keyring")
        sealed = seal(keyring, message_id, channel, kind, content)
    return _TABLE, {
        "id": message_id,
        "channel": channel,
        "kind": kind,
        "payload": dict(payload),
        "sealed": sealed,
        "state": PENDING,
        "due_at": due_at or now,
        "attempts": 0,
        "last_error": None,
        "created_at": now,
        "updated_at": now,
    }


def enqueue(
    db: Session,
    *,
    channel: str,
    kind: str,
    payload: Mapping[str, str],
    content: Mapping[str, str] | None = None,
    keyring: Keyring | None = None,
    due_at: datetime | None = None,
) -> str:
    """Add a row to the caller's transaction; it commits or rolls back with it."""
    _, values = row(
        channel=channel,
        kind=kind,
        payload=payload,
        content=content,
        keyring=keyring,
        due_at=due_at,
    )
    db.execute(_INSERT, values)
    return str(values["id"])
