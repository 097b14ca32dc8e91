"""Writing events: the one function features call, inside the change's transaction.

A feature says what happened and to whom (:class:`Audience`: a client, and the
patient's ID as that client knows it); this writes one ``event`` row per client and one
outbox row per enabled webhook endpoint of that client. Both commit or roll back with
the change: no event for a change that did not happen, none lost to a crash.
:func:`forget` takes back what a client was told of a patient, when the patient
withdraws the client's grant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from carebridge import outbox
from carebridge.events.models import Event, WebhookEndpoint
from carebridge.ids import new_id
from carebridge.utc import utcnow

CHANNEL = "webhook"
# The events of this version (docs/architecture.md, "Events and webhooks").
MESSAGE_CREATED = "message.created"
MESSAGE_READ = "message.read"
THREAD_CREATED = "thread.created"
THREAD_CLOSED = "thread.closed"
# What an app must react to (identity.events): the patient revoked the app (told to that
# app alone), the account was disabled or deleted, the patient's roster link ended.
GRANT_REVOKED = "grant.revoked"
ACCOUNT_DISABLED = "account.disabled"
ACCOUNT_DELETED = "account.deleted"
PATIENT_ROSTER_LINK_ENDED = "patient.roster_link_ended"

_EVENTS = insert(Event)


@dataclass(frozen=True)
class Audience:
    """One client that may hear of an event, and the patient as that client knows them
    (the patient ID for a care team's client, the pairwise subject for a patient's app)."""

    client_id: str
    patient: str


def emit(
    db: Session, event_type: str, audiences: Iterable[Audience], data: Mapping[str, str]
) -> list[str]:
    """Record ``event_type`` for each audience (IDs only in ``data``); returns the event IDs."""
    now = utcnow()
    seen: set[str] = set()
    rows: list[dict[str, object]] = []
    for audience in audiences:
        if audience.client_id in seen:
            continue
        seen.add(audience.client_id)
        rows.append(
            {
                "id": new_id("evt"),
                "client_id": audience.client_id,
                "type": event_type,
                "data": {**data, "patient": audience.patient},
                "created_at": now,
            }
        )
    if not rows:
        return []
    db.execute(_EVENTS, rows)
    endpoints = db.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.client_id).where(
            WebhookEndpoint.client_id.in_(seen), WebhookEndpoint.enabled.is_(True)
        )
    ).all()
    for endpoint_id, client_id in endpoints:
        for row in rows:
            if row["client_id"] == client_id:
                outbox.enqueue(
                    db,
                    channel=CHANNEL,
                    kind=event_type,
                    payload={"endpoint": endpoint_id, "event": str(row["id"])},
                )
    return [str(row["id"]) for row in rows]


def forget(db: Session, *, client_id: str, patient: str) -> int:
    """Delete the events ``client_id`` has of ``patient`` (as it knows them): once the
    patient revoked its grant, the feed shows none and the queued deliveries of them
    end as dead letters (``event_purged``), not at the app. Returns how many."""
    result = db.execute(
        delete(Event).where(
            Event.client_id == client_id, Event.data["patient"].as_string() == patient
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
