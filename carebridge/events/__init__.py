"""Events for provider apps: the event log, webhooks (Standard Webhooks) and the feed.

Plumbing: it imports no feature package. A feature emits in its own transaction
(:func:`emit`, naming the clients that may hear of it: :class:`Audience`); each event
goes to the client's feed (``GET /api/v1/events``) and, through the outbox's
``webhook`` channel, to each of its enabled endpoints (:class:`WebhookHandler`).
Endpoints are registered with :mod:`.endpoints` (CLI ``carebridge webhooks``, admin API).

This is the public API; the modules behind it are the package's own.
"""

from __future__ import annotations

from carebridge.events.emit import (
    ACCOUNT_DELETED,
    ACCOUNT_DISABLED,
    CHANNEL,
    GRANT_REVOKED,
    MESSAGE_CREATED,
    MESSAGE_READ,
    PATIENT_ROSTER_LINK_ENDED,
    THREAD_CLOSED,
    THREAD_CREATED,
    Audience,
    Recipient,
    emit,
    emit_to,
    event_rows,
    forget,
    recipients,
    recipients_statement,
)
from carebridge.events.endpoints import disable_client

__all__ = [
    "ACCOUNT_DELETED",
    "ACCOUNT_DISABLED",
    "CHANNEL",
    "GRANT_REVOKED",
    "MESSAGE_CREATED",
    "MESSAGE_READ",
    "PATIENT_ROSTER_LINK_ENDED",
    "THREAD_CLOSED",
    "THREAD_CREATED",
    "Audience",
    "Recipient",
    "disable_client",
    "emit",
    "emit_to",
    "event_rows",
    "forget",
    "recipients",
    "recipients_statement",
]
