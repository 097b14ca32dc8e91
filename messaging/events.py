"""What messaging tells apps (carebridge.events): the one place it emits, per event.

Who hears of a thread: the care team's clients (they address the patient by patient
ID) and the apps the patient authorized with ``messaging.read`` (by the ``sub`` each was
given: identity.interfaces.apps_of_patient). The same apps whose tokens could read the
thread, no others. IDs only: never a subject, a body or a file name.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, Table, bindparam, select
from sqlalchemy.orm import Session

from carebridge import events
from identity.interfaces import apps_of_patient, apps_of_patient_query
from messaging.models import CareTeamClient, Message, Thread

READ_SCOPE = "messaging.read"


def audiences(db: Session, *, patient_id: str, care_team_id: str) -> list[events.Audience]:
    team = db.scalars(
        select(CareTeamClient.client_id)
        .where(CareTeamClient.care_team_id == care_team_id)
        .order_by(CareTeamClient.client_id)
    ).all()
    found = [events.Audience(client_id=client_id, patient=patient_id) for client_id in team]
    found += [
        events.Audience(client_id=app.client_id, patient=app.subject)
        for app in apps_of_patient(db, patient_id, READ_SCOPE)
    ]
    return found


# Who hears of a message in a thread (by its ID): the team's clients, then the patient's
# apps (identity's question, folded in), with their webhook endpoints. Built once: the
# post's hot path runs it past SQLAlchemy's machinery (carebridge.db.DirectStatement).
_MESSAGE_RECIPIENTS = events.recipients_statement(
    select(CareTeamClient.client_id, Thread.patient_id)
    .join(Thread, Thread.care_team_id == CareTeamClient.care_team_id)
    .where(Thread.id == bindparam("thread_id", type_=String())),
    apps_of_patient_query(
        select(Thread.patient_id)
        .where(Thread.id == bindparam("thread_id", type_=String()))
        .scalar_subquery(),
        READ_SCOPE,
    ),
)


def message_recipients(db: Session, thread_id: str) -> list[events.Recipient]:
    """Who hears of a message in the thread, with their webhook endpoints, in one
    statement (none for a thread that does not exist)."""
    return events.recipients(db, _MESSAGE_RECIPIENTS, {"thread_id": thread_id})


def message_created_rows(
    recipients: list[events.Recipient], thread_id: str, message_id: str, author_kind: str
) -> list[tuple[Table, dict[str, Any]]]:
    """A post's event rows, for the post to write with its message (one statement)."""
    data = {"thread": thread_id, "message": message_id, "author": author_kind}
    return events.event_rows(events.MESSAGE_CREATED, recipients, data)


def thread_created(db: Session, thread: Thread, message_id: str) -> None:
    found = audiences(db, patient_id=thread.patient_id, care_team_id=thread.care_team_id)
    data = {"thread": thread.id, "message": message_id}
    events.emit(db, events.THREAD_CREATED, found, data)
    events.emit(db, events.MESSAGE_CREATED, found, data)


def message_created(db: Session, thread_id: str, message_id: str, author_kind: str) -> None:
    data = {"thread": thread_id, "message": message_id, "author": author_kind}
    events.emit_to(db, events.MESSAGE_CREATED, message_recipients(db, thread_id), data)


def thread_closed(db: Session, thread: Thread) -> None:
    found = audiences(db, patient_id=thread.patient_id, care_team_id=thread.care_team_id)
    events.emit(db, events.THREAD_CLOSED, found, {"thread": thread.id})


def message_read(db: Session, thread: Thread, *, reader: str, through_seq: int) -> None:
    """A person's read position advanced: ``reader`` is the side ("patient" or
    "care_team"), never who (the audit log has that); the message is the last one read."""
    message_id = db.scalar(
        select(Message.id).where(Message.thread_id == thread.id, Message.seq == through_seq)
    )
    if message_id is None:
        return
    found = audiences(db, patient_id=thread.patient_id, care_team_id=thread.care_team_id)
    data = {"thread": thread.id, "message": message_id, "reader": reader}
    events.emit(db, events.MESSAGE_READ, found, data)
