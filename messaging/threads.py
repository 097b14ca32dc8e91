"""Thread and message operations, shared by the JSON API and the patient pages.

Each function runs inside :func:`messaging.access.perform` (one transaction with its audit
record) and takes the resolved actor. Plaintext exists only in memory, between the request
and the cipher.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from carebridge.keyring import Keyring
from carebridge.settings import Settings
from identity.models import RosterMember, new_id
from messaging import crypto, files
from messaging.access import (
    THREAD_ID,
    Actor,
    RefusedError,
    gone,
    load_thread,
    may_see,
    not_found,
)
from messaging.crypto import ThreadCipher
from messaging.models import Attachment, CareTeam, Message, Thread, ThreadReadState
from sms import outbox

T = TypeVar("T")
MAX_SUBJECT = 200
PAGE_DEFAULT = 25
PAGE_MAX = 100


@dataclass(frozen=True)
class AttachmentView:
    id: str
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class MessageView:
    id: str
    seq: int
    author_kind: str
    # None where the reader should not learn it (a patient reading staff messages).
    author_id: str | None
    body: str
    created_at: datetime
    attachments: list[AttachmentView] = field(default_factory=list)
    mine: bool = False


@dataclass(frozen=True)
class ThreadView:
    id: str
    # None for a patient: their own apps (third parties among them) see pairwise subjects,
    # never the global patient ID (invariant 2).
    patient_id: str | None
    care_team_id: str
    care_team_name: str
    subject: str
    status: str
    created_at: datetime
    last_message_at: datetime
    unread: int


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class Download:
    filename: str
    content_type: str
    content: bytes = field(repr=False)


def now() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    # SQLite hands datetimes back naive; every stored time is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def page_size(value: str | None) -> int:
    if value is None or value == "":
        return PAGE_DEFAULT
    if not value.isdigit() or not 1 <= int(value) <= PAGE_MAX:
        raise RefusedError(400, f"limit must be a whole number from 1 to {PAGE_MAX}.")
    return int(value)


# Cursors: opaque to clients, checked like any input.


def _thread_cursor(thread: Thread) -> str:
    raw = f"{aware(thread.last_message_at).isoformat()}|{thread.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _parse_thread_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, thread_id = raw.split("|", 1)
        return datetime.fromisoformat(moment), thread_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise RefusedError(400, "The cursor is not valid.") from None


def _parse_seq_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    if not cursor.isdigit() or len(cursor) > 9:
        raise RefusedError(400, "The cursor is not valid.")
    return int(cursor)


# Reading


def _advance(db: Session, thread_id: str, participant: str, seq: int) -> None:
    """Move a participant's read position forward (never back), in one statement."""
    insert = postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(ThreadReadState).values(
        thread_id=thread_id, participant=participant, last_read_seq=seq, updated_at=now()
    )
    db.execute(
        statement.on_conflict_do_update(
            index_elements=[ThreadReadState.thread_id, ThreadReadState.participant],
            set_={
                "last_read_seq": statement.excluded.last_read_seq,
                "updated_at": statement.excluded.updated_at,
            },
            where=ThreadReadState.last_read_seq < statement.excluded.last_read_seq,
        )
    )


def _view(
    keyring: Keyring,
    thread: Thread,
    team_name: str,
    last_read: int,
    cipher: ThreadCipher | None = None,
    *,
    actor: Actor,
) -> ThreadView:
    cipher = cipher or crypto.cipher_for(keyring, thread)
    return ThreadView(
        id=thread.id,
        patient_id=None if actor.kind == "patient" else thread.patient_id,
        care_team_id=thread.care_team_id,
        care_team_name=team_name,
        subject=cipher.open_text(thread.id, crypto.SUBJECT, thread.subject_encrypted),
        status=thread.status,
        created_at=aware(thread.created_at),
        last_message_at=aware(thread.last_message_at),
        unread=max(0, thread.last_seq - last_read),
    )


def list_threads(
    db: Session, keyring: Keyring, actor: Actor, *, cursor: str | None, limit: int
) -> Page[ThreadView]:
    """The actor's live threads, most recent activity first, with unread counts."""
    state = ThreadReadState
    query = (
        select(Thread, CareTeam.name, func.coalesce(state.last_read_seq, 0))
        .join(CareTeam, CareTeam.id == Thread.care_team_id)
        .outerjoin(
            state, and_(state.thread_id == Thread.id, state.participant == actor.participant)
        )
        .where(Thread.data_key_wrapped.is_not(None))
    )
    if actor.for_care_team:
        query = query.where(Thread.care_team_id == actor.care_team_id)
    else:
        query = query.where(Thread.patient_id == actor.id)
    if cursor:
        moment, thread_id = _parse_thread_cursor(cursor)
        query = query.where(
            or_(
                Thread.last_message_at < moment,
                and_(Thread.last_message_at == moment, Thread.id < thread_id),
            )
        )
    query = query.order_by(Thread.last_message_at.desc(), Thread.id.desc()).limit(limit + 1)
    rows = db.execute(query).all()
    views = [_view(keyring, thread, name, read, actor=actor) for thread, name, read in rows[:limit]]
    more = len(rows) > limit
    return Page(views, _thread_cursor(rows[limit - 1][0]) if more else None)


def unread_total(db: Session, actor: Actor) -> int:
    state = ThreadReadState
    query = (
        select(func.coalesce(func.sum(Thread.last_seq - func.coalesce(state.last_read_seq, 0)), 0))
        .outerjoin(
            state, and_(state.thread_id == Thread.id, state.participant == actor.participant)
        )
        .where(Thread.patient_id == actor.id, Thread.data_key_wrapped.is_not(None))
    )
    return int(db.execute(query).scalar_one())


def _attachments_of(
    db: Session, cipher: ThreadCipher, message_ids: list[str]
) -> dict[str, list[AttachmentView]]:
    found: dict[str, list[AttachmentView]] = {}
    if not message_ids:
        return found
    query = (
        select(
            Attachment.id,
            Attachment.message_id,
            Attachment.filename_encrypted,
            Attachment.content_type,
            Attachment.size,
        )
        .where(Attachment.message_id.in_(message_ids))
        .order_by(Attachment.created_at, Attachment.id)
    )
    for att_id, message_id, name_blob, content_type, size in db.execute(query):
        name = cipher.open_text(att_id, crypto.FILENAME, name_blob)
        found.setdefault(message_id, []).append(AttachmentView(att_id, name, content_type, size))
    return found


def _message_view(
    actor: Actor,
    *,
    message_id: str,
    seq: int,
    author_kind: str,
    author_id: str,
    created_at: datetime,
    body: str,
    attachments: list[AttachmentView],
) -> MessageView:
    # A patient sees who wrote by "mine" and the team's name: no author IDs, their own
    # (the patient ID) included.
    hidden = actor.kind == "patient"
    mine = (
        author_kind == "patient"
        if actor.kind == "patient"
        else author_kind == actor.kind and author_id == actor.id
    )
    return MessageView(
        id=message_id,
        seq=seq,
        author_kind=author_kind,
        author_id=None if hidden else author_id,
        body=body,
        created_at=aware(created_at),
        attachments=attachments,
        mine=mine,
    )


def get_thread(
    db: Session,
    keyring: Keyring,
    actor: Actor,
    thread_id: str,
    *,
    cursor: str | None,
    limit: int,
    mark_read: bool = False,
) -> tuple[ThreadView, Page[MessageView]]:
    """A thread and one page of its messages, oldest first after ``cursor`` (a seq)."""
    after = _parse_seq_cursor(cursor)
    if not THREAD_ID.fullmatch(thread_id):
        raise not_found()
    state = ThreadReadState
    # The thread, its team's name and the reader's position in one round trip.
    row = db.execute(
        select(Thread, CareTeam.name, func.coalesce(state.last_read_seq, 0))
        .join(CareTeam, CareTeam.id == Thread.care_team_id)
        .outerjoin(
            state, and_(state.thread_id == Thread.id, state.participant == actor.participant)
        )
        .where(Thread.id == thread_id)
    ).first()
    if row is None or not may_see(actor, row[0]):
        raise not_found()
    thread, team_name, last_read = row
    if thread.data_key_wrapped is None:
        raise gone()
    cipher = crypto.cipher_for(keyring, thread)
    view = _view(keyring, thread, team_name, last_read, cipher, actor=actor)
    query = (
        select(
            Message.id,
            Message.seq,
            Message.author_kind,
            Message.author_id,
            Message.body_encrypted,
            Message.created_at,
        )
        .where(Message.thread_id == thread.id, Message.seq > after)
        .order_by(Message.seq)
        .limit(limit + 1)
    )
    rows = db.execute(query).all()
    shown = rows[:limit]
    attachments = _attachments_of(db, cipher, [m.id for m in shown])
    messages = [
        _message_view(
            actor,
            message_id=m.id,
            seq=m.seq,
            author_kind=m.author_kind,
            author_id=m.author_id,
            created_at=m.created_at,
            body=cipher.open_text(m.id, crypto.BODY, m.body_encrypted),
            attachments=attachments.get(m.id, []),
        )
        for m in shown
    ]
    if mark_read and shown:
        _advance(db, thread.id, actor.participant, shown[-1].seq)
    more = len(rows) > limit
    return view, Page(messages, str(shown[-1].seq) if more else None)


# Writing


def check_body(settings: Settings, body: str, *, allow_empty: bool = False) -> str:
    if "\x00" in body:
        raise RefusedError(400, "The message contains a character that is not allowed.")
    if len(body) > settings.message_max_chars:
        raise RefusedError(
            413, f"Messages are limited to {settings.message_max_chars:,} characters."
        )
    if not body.strip() and not allow_empty:
        raise RefusedError(400, "Write a message first.")
    return body


@dataclass(frozen=True)
class Posted:
    """A message just written: what the caller needs to answer, without re-reading it."""

    id: str
    seq: int
    author_kind: str
    author_id: str
    created_at: datetime


def _insert_message(
    db: Session,
    cipher: ThreadCipher,
    actor: Actor,
    *,
    patient_id: str,
    seq: int,
    moment: datetime,
    body: str,
) -> Posted:
    # Core statements, not the unit of work: this is the hot path of the service.
    posted = Posted(new_id("msg"), seq, actor.kind, actor.id, moment)
    db.execute(
        insert(Message).values(
            id=posted.id,
            thread_id=cipher.thread_id,
            seq=seq,
            author_kind=actor.kind,
            author_id=actor.id,
            body_encrypted=cipher.seal_text(posted.id, crypto.BODY, body),
            created_at=moment,
        )
    )
    _advance(db, cipher.thread_id, actor.participant, seq)
    if actor.for_care_team:
        # Same transaction: the notice exists if and only if the message does.
        outbox.enqueue(
            db, patient_id=patient_id, kind=outbox.NEW_MESSAGE, thread_id=cipher.thread_id
        )
    return posted


def create_thread(
    db: Session,
    keyring: Keyring,
    settings: Settings,
    actor: Actor,
    *,
    patient_id: str,
    subject: str,
    body: str,
) -> tuple[Thread, Posted]:
    """Care teams open threads (patients reply in them)."""
    if actor.care_team_id is None:
        raise RefusedError(403, "Only a care team can start a conversation.")
    subject = subject.strip()
    if not subject or len(subject) > MAX_SUBJECT or "\x00" in subject:
        raise RefusedError(400, f"The subject must be 1 to {MAX_SUBJECT} characters.")
    check_body(settings, body)
    known = db.execute(
        select(RosterMember.patient_id).where(RosterMember.patient_id == patient_id)
    ).first()
    if known is None:
        raise RefusedError(422, "No such patient.")
    thread_id = new_id("th")
    cipher, wrapped = crypto.new_thread_key(keyring, thread_id)
    moment = now()
    thread = Thread(
        id=thread_id,
        patient_id=patient_id,
        care_team_id=actor.care_team_id,
        subject_encrypted=cipher.seal_text(thread_id, crypto.SUBJECT, subject),
        status="open",
        data_key_wrapped=wrapped.wrapped,
        kek_id=wrapped.kek_id,
        last_seq=1,
        legal_hold=False,
        created_at=moment,
        last_message_at=moment,
    )
    db.add(thread)
    db.flush()
    posted = _insert_message(
        db, cipher, actor, patient_id=patient_id, seq=1, moment=moment, body=body
    )
    return thread, posted


def _next_seq(
    db: Session, keyring: Keyring, actor: Actor, thread_id: str, moment: datetime
) -> tuple[ThreadCipher, str, int]:
    """Take the thread's next message number, locking its row until commit, in one
    statement; a refusal says why only to someone who may see the thread."""
    mine = (
        Thread.care_team_id == actor.care_team_id
        if actor.for_care_team
        else Thread.patient_id == actor.id
    )
    claimed = (
        db.execute(
            update(Thread)
            .where(
                Thread.id == thread_id,
                mine,
                Thread.status == "open",
                Thread.data_key_wrapped.is_not(None),
            )
            .values(last_seq=Thread.last_seq + 1, last_message_at=moment)
            .returning(Thread.last_seq, Thread.patient_id, Thread.data_key_wrapped, Thread.kek_id)
            .execution_options(synchronize_session=False)
        ).first()
        if THREAD_ID.fullmatch(thread_id)
        else None
    )
    if claimed is None:
        thread = load_thread(db, actor, thread_id)  # 404 or 410
        if thread.status != "open":
            raise RefusedError(409, "This conversation is closed.")
        raise not_found()
    seq, patient_id, wrapped, kek_id = claimed
    return crypto.open_thread_key(keyring, thread_id, wrapped, kek_id), patient_id, seq


def post_message(
    db: Session, keyring: Keyring, settings: Settings, actor: Actor, thread_id: str, *, body: str
) -> Posted:
    check_body(settings, body)
    moment = now()
    cipher, patient_id, seq = _next_seq(db, keyring, actor, thread_id, moment)
    return _insert_message(
        db, cipher, actor, patient_id=patient_id, seq=seq, moment=moment, body=body
    )


def check_attachment(settings: Settings, content: bytes) -> str:
    """The detected content type, or a refusal (413 too big, 415 not an allowed type)."""
    if len(content) > settings.attachment_max_bytes:
        raise RefusedError(
            413, f"Attachments are limited to {settings.attachment_max_bytes:,} bytes."
        )
    if not content:
        raise RefusedError(400, "The file is empty.")
    content_type = files.detect(content, settings.attachment_types)
    if content_type is None:
        allowed = files.allowed_names(settings.attachment_types)
        raise RefusedError(415, f"Only {allowed} files can be attached (checked from the content).")
    return content_type


def post_attachment(
    db: Session,
    keyring: Keyring,
    settings: Settings,
    actor: Actor,
    thread_id: str,
    *,
    filename: str,
    content: bytes,
    body: str = "",
) -> tuple[Posted, Attachment]:
    """A message carrying one attachment (and optionally text)."""
    check_body(settings, body, allow_empty=True)
    content_type = check_attachment(settings, content)
    moment = now()
    cipher, patient_id, seq = _next_seq(db, keyring, actor, thread_id, moment)
    message = _insert_message(
        db, cipher, actor, patient_id=patient_id, seq=seq, moment=moment, body=body
    )
    attachment = Attachment(
        id=new_id("att"),
        message_id=message.id,
        thread_id=thread_id,
        content_type=content_type,
        size=len(content),
        created_at=message.created_at,
    )
    name = files.clean_filename(filename, content_type)
    attachment.filename_encrypted = cipher.seal_text(attachment.id, crypto.FILENAME, name)
    attachment.content_encrypted = cipher.seal(attachment.id, crypto.CONTENT, content)
    db.add(attachment)
    return message, attachment


def download(
    db: Session, keyring: Keyring, actor: Actor, thread_id: str, attachment_id: str
) -> Download:
    thread = load_thread(db, actor, thread_id)
    attachment = db.get(Attachment, attachment_id)
    if attachment is None or attachment.thread_id != thread.id:
        raise RefusedError(404, "No such attachment.")
    cipher = crypto.cipher_for(keyring, thread)
    return Download(
        filename=cipher.open_text(attachment.id, crypto.FILENAME, attachment.filename_encrypted),
        content_type=attachment.content_type,
        content=cipher.open(attachment.id, crypto.CONTENT, attachment.content_encrypted),
    )


def mark_read(db: Session, actor: Actor, thread_id: str, through: int | None) -> int:
    thread = load_thread(db, actor, thread_id)
    seq = thread.last_seq if through is None else max(0, min(through, thread.last_seq))
    _advance(db, thread.id, actor.participant, seq)
    return seq


def close_thread(db: Session, actor: Actor, thread_id: str) -> None:
    thread = load_thread(db, actor, thread_id, lock=True)
    if not actor.for_care_team:
        raise RefusedError(403, "Only the care team can close a conversation.")
    if thread.status != "closed":
        thread.status = "closed"
        thread.closed_at = now()
