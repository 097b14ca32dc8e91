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
from typing import Any, cast

from sqlalchemy import Select, Table, delete, literal_column, select, union_all
from sqlalchemy.orm import Session

from carebridge import outbox
from carebridge.db import DirectStatement, insert_together
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

_EVENTS = cast(Table, Event.__table__)


@dataclass(frozen=True)
class Audience:
    """One client that may hear of an event, and the patient as that client knows them
    (the patient ID for a care team's client, the pairwise subject for a patient's app)."""

    client_id: str
    patient: str


_NAMES = ("client_id", "patient")


@dataclass(frozen=True)
class Recipient:
    """An audience and its enabled webhook endpoints, each of which gets a delivery."""

    audience: Audience
    endpoints: tuple[str, ...]


def recipients_statement(*audiences: Select[tuple[str, str]]) -> DirectStatement:
    """Who hears of an event, as one statement for a hot path (a message's post, which
    would otherwise ask who, then the endpoints of each): the caller's queries of
    (client ID, patient as that client knows them), first query first when a client is
    in several, each joined to its enabled endpoints. Built once by the caller (its
    values as bind parameters), run by :func:`recipients`."""
    ranked = union_all(
        *(
            select(
                *(
                    column.label(name)
                    for column, name in zip(query.subquery().c, _NAMES, strict=True)
                )
            ).add_columns(literal_column(str(rank)).label("rank"))
            for rank, query in enumerate(audiences)
        )
    ).subquery()
    client_id, patient, rank = ranked.c
    return DirectStatement(
        select(client_id, patient, WebhookEndpoint.id)
        .select_from(ranked)
        .outerjoin(
            WebhookEndpoint,
            (WebhookEndpoint.client_id == client_id) & WebhookEndpoint.enabled.is_(True),
        )
        .order_by(rank, client_id, WebhookEndpoint.id)
    )


def recipients(db: Session, statement: DirectStatement, params: dict[str, Any]) -> list[Recipient]:
    """Run a :func:`recipients_statement` with its values."""
    found = statement.rows(db, params)
    return _grouped((str(row[0]), str(row[1]), row[2]) for row in found)


def _grouped(found: Iterable[tuple[str, str, str | None]]) -> list[Recipient]:
    """One recipient per client: the first patient it was named with, its endpoints."""
    patients: dict[str, str] = {}
    endpoints: dict[str, list[str]] = {}
    for client_id, patient, endpoint_id in found:
        if patients.setdefault(client_id, patient) != patient:
            continue  # the client is in an earlier query too: that one's patient
        listed = endpoints.setdefault(client_id, [])
        if endpoint_id is not None and endpoint_id not in listed:
            listed.append(endpoint_id)
    return [
        Recipient(Audience(client_id, patient), tuple(endpoints[client_id]))
        for client_id, patient in patients.items()
    ]


def event_rows(
    event_type: str, recipients: Iterable[Recipient], data: Mapping[str, str]
) -> list[tuple[Table, dict[str, Any]]]:
    """The rows of an event (IDs only in ``data``): one ``event`` row per recipient, one
    outbox row per endpoint of it, for the caller to write with its own rows
    (carebridge.db.insert_together or insert_gated) in the change's transaction."""
    now = utcnow()
    rows: list[tuple[Table, dict[str, Any]]] = []
    for recipient in recipients:
        event_id = new_id("evt")
        rows.append(
            (
                _EVENTS,
                {
                    "id": event_id,
                    "client_id": recipient.audience.client_id,
                    "type": event_type,
                    "data": {**data, "patient": recipient.audience.patient},
                    "created_at": now,
                },
            )
        )
        rows += [
            outbox.row(
                channel=CHANNEL,
                kind=event_type,
                payload={"endpoint": endpoint_id, "event": event_id},
            )
            for endpoint_id in recipient.endpoints
        ]
    return rows


def emit(
    db: Session, event_type: str, audiences: Iterable[Audience], data: Mapping[str, str]
) -> list[str]:
    """Record ``event_type`` for each audience (IDs only in ``data``); returns the event IDs."""
    unique: dict[str, Audience] = {}
    for audience in audiences:
        unique.setdefault(audience.client_id, audience)  # a client hears once
    if not unique:
        return []
    enabled = db.execute(
        select(WebhookEndpoint.client_id, WebhookEndpoint.id)
        .where(WebhookEndpoint.client_id.in_(unique), WebhookEndpoint.enabled.is_(True))
        .order_by(WebhookEndpoint.id)
    ).all()
    found = [
        Recipient(audience, tuple(endpoint for client, endpoint in enabled if client == client_id))
        for client_id, audience in unique.items()
    ]
    return emit_to(db, event_type, found, data)


def emit_to(
    db: Session, event_type: str, recipients: Iterable[Recipient], data: Mapping[str, str]
) -> list[str]:
    """:func:`emit` to recipients already found (:func:`recipients`): one statement on
    PostgreSQL for the events and their deliveries."""
    rows = event_rows(event_type, recipients, data)
    insert_together(db, rows)
    return [str(values["id"]) for table, values in rows if table is _EVENTS]


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
