"""Thread and message operations, shared by the JSON API and the patient pages.

Each function runs inside :func:`messaging.access.perform` (one transaction with its audit
record) and takes the resolved actor. Plaintext exists only in memory, between the request
and the cipher.
"""

from __future__ import annotations

import base64
import binascii
import itertools
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import (
    CTE,
    DateTime,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.db import DirectStatement, FromGate, Gate, insert_gated, insert_together
from carebridge.i18n import N_
from carebridge.ids import new_id
from carebridge.keyring import Keyring
from carebridge.settings import Settings
from carebridge.utc import utcnow
from identity.interfaces import Eligibility, eligibility
from messaging import crypto, events, files, reads, relationships
from messaging.access import (
    THREAD_ID,
    Actor,
    RefusedError,
    gone,
    load_thread,
    may_see,
    may_see_pool,
    not_found,
    sees_pool_of,
)
from messaging.crypto import ThreadCipher
from messaging.models import (
    Attachment,
    CareRelationship,
    CareTeam,
    CareTeamTopic,
    Message,
    Thread,
)
from messaging.roles import pool_of_team

# The author of a team's automatic first reply (author_kind "app"): no person, no client.
from messaging.waiting import AUTO_REPLY_AUTHOR, overdue
from sms.interfaces import new_message_notice, notice_of_thread_columns, notice_status_of

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


# Not frozen: a page builds twenty, and a frozen dataclass sets each field through
# object.__setattr__ (five times the cost). Nothing changes a view once built.
@dataclass(slots=True)
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
    # For a message from the reader's side: whether the other side has read it (a care
    # team when any of its staff did); None for the other side's messages.
    read: bool | None = None


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
    # How far the other side has read (a message seq; 0: nothing yet).
    other_side_read_seq: int
    # For the care team reading one thread: how the patient's notice of its latest new
    # message went (sms.interfaces.NoticeStatus; messaging.api fills it in).
    patient_notice: str | None = None
    # The pool the thread is routed to (messaging.roles), for care teams; None: the
    # team-wide pool, and always for a patient.
    pool_id: str | None = None
    # "team" or "patient" (a patient wrote first, on topic_id); escalated_at: a
    # patient-started thread left unanswered past the team's escalate_after.
    started_by: str = "team"
    topic_id: str | None = None
    escalated_at: datetime | None = None
    # For a care team: escalated and still waiting for the team's answer (listed first).
    overdue: bool = False


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class Download:
    filename: str
    content_type: str
    content: bytes = field(repr=False)


def page_size(value: str | None) -> int:
    if value is None or value == "":
        return PAGE_DEFAULT
    if not value.isdigit() or not 1 <= int(value) <= PAGE_MAX:
        raise RefusedError(400, f"limit must be a whole number from 1 to {PAGE_MAX}.")
    return int(value)


# Cursors: opaque to clients, checked like any input.


def _thread_cursor(thread: Thread, overdue: int) -> str:
    raw = f"{overdue}|{thread.last_message_at.isoformat()}|{thread.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _parse_thread_cursor(cursor: str) -> tuple[int, datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        flag, moment, thread_id = raw.split("|", 2)
        if flag not in ("0", "1"):
            raise ValueError(flag)
        return int(flag), datetime.fromisoformat(moment), thread_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise RefusedError(400, N_("The cursor is not valid.")) from None


def _parse_seq_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    if not cursor.isdigit() or len(cursor) > 9:
        raise RefusedError(400, N_("The cursor is not valid."))
    return int(cursor)


# Reading


_READ_STATES = reads.READ_STATES
_MESSAGES = cast(Table, Message.__table__)
_THREADS = cast(Table, Thread.__table__)
# Hot-path statements, built once (building one and its cache key costs more than
# running it): the reader's page, and the claim of a thread's next message number for
# each kind of actor (with the writer's read-state upsert, reads.ADVANCE, as a Core
# construct on PostgreSQL, compiled once by its DirectStatement: _advanced).


_RELATIONSHIPS = cast(Table, CareRelationship.__table__)
# The thread's patient and team still in an active care relationship (either side writes
# only then; messaging.relationships).
_IN_CARE = (
    select(_RELATIONSHIPS.c.id)
    .where(
        _RELATIONSHIPS.c.patient_id == _THREADS.c.patient_id,
        _RELATIONSHIPS.c.care_team_id == _THREADS.c.care_team_id,
        _RELATIONSHIPS.c.ended_at.is_(None),
    )
    .exists()
)


def _claim_next_seq(mine: Any, key: Any = None) -> Any:
    """Claim a thread's next message number: the actor's (``mine``), open, its patient
    and team in an active care relationship, and its key still there (``key``: by
    default, any)."""
    return (
        update(_THREADS)
        .where(
            _THREADS.c.id == bindparam("thread_id"),
            mine,
            _THREADS.c.status == "open",
            _IN_CARE,
            _THREADS.c.data_key_wrapped.is_not(None) if key is None else key,
        )
        .values(last_seq=_THREADS.c.last_seq + 1, last_message_at=bindparam("moment"))
        .returning(
            _THREADS.c.last_seq,
            _THREADS.c.patient_id,
            _THREADS.c.data_key_wrapped,
            _THREADS.c.kek_id,
        )
    )


_TEAMS = cast(Table, CareTeam.__table__)
_ATTACHMENTS = cast(Table, Attachment.__table__)
# The reader's side's read position, and the other side's (read receipts).
_MINE = _READ_STATES.alias("mine")
_THEIRS = _READ_STATES.alias("theirs")


def _notice_columns(side: str) -> list[Any]:
    """A care team's view says how the patient's notice of the latest message went (sms
    keeps it): asked in the page's statement, not in a round trip of its own."""
    if side != reads.TEAM:
        return []
    state, reason = notice_of_thread_columns(_THREADS.c.id)
    return [state.label("notice_state"), reason.label("notice_reason")]


def _thread_for_reader(side: str) -> Any:
    """Only what a reader's view needs: every row of the page repeats these."""
    return (
        select(
            *(
                _THREADS.c[name]
                for name in (
                    "id",
                    "patient_id",
                    "care_team_id",
                    "pool_id",
                    "subject_encrypted",
                    "status",
                    "data_key_wrapped",
                    "kek_id",
                    "last_seq",
                    "created_at",
                    "last_message_at",
                    "started_by",
                    "topic_id",
                    "escalated_at",
                )
            ),
            _TEAMS.c.name.label("team_name"),
            func.coalesce(_THEIRS.c.last_read_seq, 0).label("other_read"),
            reads.unread_of(side, _MINE.c.last_read_seq).label("unread"),
            *_notice_columns(side),
        )
        .select_from(
            _THREADS.join(_TEAMS, _TEAMS.c.id == _THREADS.c.care_team_id)
            .outerjoin(_MINE, reads.position_of(_MINE, "side"))
            .outerjoin(_THEIRS, reads.position_of(_THEIRS, "other_side"))
        )
        .where(_THREADS.c.id == bindparam("thread_id"))
    )


# A page of messages with their attachments (usually none) in one round trip: the page
# first, then each message's attachment rows, if any, joined on.
_PAGE = (
    select(
        _MESSAGES.c.id.label("message_id"),
        _MESSAGES.c.seq.label("message_seq"),
        _MESSAGES.c.author_kind,
        _MESSAGES.c.author_id,
        _MESSAGES.c.body_encrypted,
        _MESSAGES.c.created_at.label("message_created_at"),
    )
    .where(_MESSAGES.c.thread_id == bindparam("thread_id"), _MESSAGES.c.seq > bindparam("after"))
    .order_by(_MESSAGES.c.seq)
    .limit(bindparam("limit"))
    .subquery("page")
)
# What a reader sees, in one round trip: first the thread, its team's name and the
# reader's position; then a page of messages with their attachments, if any, joined on.
# Each part leaves the other's columns NULL (typed, so each backend reads them back as
# itself), so the thread's columns are not repeated on every row.
_PAGE_ROWS = (
    _PAGE.c.message_id,
    _PAGE.c.message_seq,
    _PAGE.c.author_kind,
    _PAGE.c.author_id,
    _PAGE.c.body_encrypted,
    _PAGE.c.message_created_at,
    _ATTACHMENTS.c.id.label("attachment_id"),
    _ATTACHMENTS.c.filename_encrypted,
    _ATTACHMENTS.c.content_type,
    _ATTACHMENTS.c.size,
    _ATTACHMENTS.c.created_at.label("attachment_created_at"),
)


def _nulls(columns: Any) -> list[Any]:
    return [type_coerce(null(), column.type).label(column.key) for column in columns]


def _read_page(side: str) -> Any:
    thread = _thread_for_reader(side)
    return union_all(
        thread.add_columns(*_nulls(_PAGE_ROWS), literal_column("0", Integer).label("part")),
        select(
            *_nulls(thread.selected_columns),
            *_PAGE_ROWS,
            literal_column("1", Integer).label("part"),
        ).select_from(
            _PAGE.outerjoin(_ATTACHMENTS, _ATTACHMENTS.c.message_id == _PAGE.c.message_id)
        ),
    ).order_by(
        literal_column("part"),
        literal_column("message_seq"),
        literal_column("attachment_created_at"),
        literal_column("attachment_id"),
    )


# Per side (the unread count differs). PostgreSQL: the request's audit record written by
# the same statement. All run direct.
_READ_PAGE_DIRECT = {side: DirectStatement(_read_page(side)) for side in reads.OTHER_SIDE}
_READ_PAGE_AUDITED_DIRECT = {
    side: DirectStatement(audit.with_record(_read_page(side))) for side in reads.OTHER_SIDE
}


def _advanced(claimed: CTE) -> CTE:
    """PostgreSQL: the writer's side's read position moved to the number ``claimed`` took
    (the upsert of reads.ADVANCE, reading the claim; ``participant`` is the side)."""
    upsert = pg_insert(_READ_STATES).from_select(
        ["thread_id", "participant", "last_read_seq", "updated_at"],
        select(
            bindparam("thread_id", type_=String()),
            bindparam("participant", type_=String()),
            claimed.c.last_seq,
            bindparam("moment", type_=DateTime(timezone=True)),
        ),
    )
    return upsert.on_conflict_do_update(
        index_elements=[_READ_STATES.c.thread_id, _READ_STATES.c.participant],
        set_={
            "last_read_seq": upsert.excluded.last_read_seq,
            "updated_at": upsert.excluded.updated_at,
        },
        where=_READ_STATES.c.last_read_seq < upsert.excluded.last_read_seq,
    ).cte("advanced")


def _owned_by(for_care_team: bool) -> Any:
    """The claim's condition on its owner: the actor's team, or the patient."""
    column = _THREADS.c.care_team_id if for_care_team else _THREADS.c.patient_id
    return column == bindparam("owner")


def _claim_and_advance(for_care_team: bool) -> DirectStatement:
    """PostgreSQL: the claim and the writer's read-state upsert in one statement."""
    claimed = _claim_next_seq(_owned_by(for_care_team)).cte("claimed")
    return DirectStatement(
        select(*(claimed.c[name] for name in _CLAIMED)).add_cte(_advanced(claimed))
    )


def _claim_gate(for_care_team: bool, by_person: bool) -> Gate:
    """A post's claim of the next number, only while the thread still holds the wrapped
    key the writer sealed its message under (``wrapped``), with the read-state upsert
    when a person writes (an app's own token moves no read position)."""
    claimed = _claim_next_seq(
        _owned_by(for_care_team), _THREADS.c.data_key_wrapped == bindparam("wrapped")
    ).cte("claimed")
    return Gate(claimed, ("last_seq",), also=(_advanced(claimed),) if by_person else ())


_CLAIMED = ("last_seq", "patient_id", "data_key_wrapped", "kek_id")
# Keyed by "acts for a care team": which column names the owner.
_CLAIM = {True: _claim_next_seq(_owned_by(True)), False: _claim_next_seq(_owned_by(False))}
_CLAIM_AND_ADVANCE = {True: _claim_and_advance(True), False: _claim_and_advance(False)}
# PostgreSQL, an app's own token writing: the claim alone (it moves no read position).
_CLAIM_DIRECT = {team: DirectStatement(_CLAIM[team]) for team in (True, False)}
# A post under a key this process already holds: the claim and the rows that depend on
# it in one statement (insert_gated). Keyed by (acts for a care team, is a person).
_CLAIM_GATE = {
    (team, person): _claim_gate(team, person) for team in (True, False) for person in (True, False)
}


def _view(
    keyring: Keyring,
    thread: Any,
    team_name: str,
    cipher: ThreadCipher | None = None,
    *,
    unread: int,
    other_read: int,
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
        created_at=thread.created_at,
        last_message_at=thread.last_message_at,
        unread=max(0, unread),
        other_side_read_seq=other_read,
        pool_id=thread.pool_id if actor.for_care_team else None,
        started_by=thread.started_by,
        topic_id=thread.topic_id,
        escalated_at=thread.escalated_at,
    )


def list_threads(
    db: Session, keyring: Keyring, actor: Actor, *, cursor: str | None, limit: int
) -> Page[ThreadView]:
    """The actor's live threads, most recent activity first, with the unread counts of
    the actor's side and how far the other side has read. A care team's overdue threads
    (escalated, still unanswered: messaging.waiting) come first; a patient's have no
    such order (0 for every thread)."""
    mine, theirs = _READ_STATES.alias("mine"), _READ_STATES.alias("theirs")
    flag = overdue() if actor.for_care_team else literal(0)
    query = (
        select(
            Thread,
            CareTeam.name,
            reads.unread_of(actor.side, mine.c.last_read_seq),
            func.coalesce(theirs.c.last_read_seq, 0),
            flag,
        )
        .join(CareTeam, CareTeam.id == Thread.care_team_id)
        .outerjoin(mine, reads.position_of(mine, "side"))
        .outerjoin(theirs, reads.position_of(theirs, "other_side"))
        .where(Thread.data_key_wrapped.is_not(None))
    )
    if actor.for_care_team:
        query = query.where(
            Thread.care_team_id == actor.care_team_id,
            sees_pool_of(actor, Thread.pool_id, Thread.id),
        )
    else:
        query = query.where(Thread.patient_id == actor.id)
    if cursor:
        after_flag, moment, thread_id = _parse_thread_cursor(cursor)
        query = query.where(
            or_(
                flag < after_flag,
                and_(
                    flag == after_flag,
                    or_(
                        Thread.last_message_at < moment,
                        and_(Thread.last_message_at == moment, Thread.id < thread_id),
                    ),
                ),
            )
        )
    query = query.order_by(flag.desc(), Thread.last_message_at.desc(), Thread.id.desc())
    rows = db.execute(query.limit(limit + 1), reads.sides(actor)).all()
    views = [
        replace(
            _view(keyring, thread, name, unread=unread, other_read=other_read, actor=actor),
            overdue=bool(late),
        )
        for thread, name, unread, other_read, late in rows[:limit]
    ]
    more = len(rows) > limit
    last = rows[limit - 1] if more else None
    return Page(views, _thread_cursor(last[0], last[4]) if last is not None else None)


def _message_view(
    actor: Actor, row: Any, body: str, attachments: list[AttachmentView], other_read: int
) -> MessageView:
    """A message of a page row (_READ_PAGE's named columns), its body opened; for a
    message from the reader's side, whether the other side has read it (never who)."""
    author_kind, author_id = row.author_kind, row.author_id
    seq, created_at = row.message_seq, row.message_created_at
    # A patient sees who wrote by "mine" and the team's name: no author IDs, their own
    # (the patient ID) included.
    if actor.kind == "patient":
        mine = author_kind == "patient"
        read = seq <= other_read if mine else None
        return MessageView(
            row.message_id, seq, author_kind, None, body, created_at, attachments, mine, read
        )
    mine = author_kind == actor.kind and author_id == actor.id
    read = seq <= other_read if author_kind != "patient" else None
    return MessageView(
        row.message_id, seq, author_kind, author_id, body, created_at, attachments, mine, read
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
    params: dict[str, Any] = {
        "thread_id": thread_id,
        "side": actor.side,
        "other_side": reads.OTHER_SIDE[actor.side],
        "after": after,
        "limit": limit + 1,
    }
    record = audit.take_staged_params(db)
    if record is not None:
        params.update(record)
    read = (_READ_PAGE_DIRECT if record is None else _READ_PAGE_AUDITED_DIRECT)[actor.side]
    # Named tuples: a page is a hundred-odd cell reads, each as cheap as an index.
    found = read.named_rows(db, params)
    # The thread (the first row, if it exists): its columns carry the Thread model's
    # attribute names, and the team's name, the reader's unread count and how far the
    # other side has read.
    thread: Any = found[0] if found and found[0].part == 0 else None
    if thread is None or not may_see(actor, thread):
        raise not_found()
    if thread.data_key_wrapped is None:
        raise gone()
    cipher = crypto.cipher_for(keyring, thread)
    other_read = thread.other_read
    view = _view(
        keyring,
        thread,
        thread.team_name,
        cipher,
        unread=thread.unread,
        other_read=other_read,
        actor=actor,
    )
    if actor.side == reads.TEAM:  # the patient's own view: their notices are theirs
        status = notice_status_of(thread.notice_state, thread.notice_reason)
        view = replace(view, patient_notice=status.value if status else None)
    shown: list[Any] = []
    attachments: dict[str, list[AttachmentView]] = {}
    more = False
    for row in itertools.islice(found, 1, None):
        message_id = row.message_id
        if not shown or shown[-1].message_id != message_id:
            if len(shown) == limit:
                more = True
                break
            shown.append(row)
        attachment_id = row.attachment_id
        if attachment_id is not None:
            name = cipher.open_text(attachment_id, crypto.FILENAME, row.filename_encrypted)
            attachments.setdefault(message_id, []).append(
                AttachmentView(attachment_id, name, row.content_type, row.size)
            )
    open_body = cipher.opener(crypto.BODY)
    messages = [
        _message_view(
            actor,
            m,
            open_body(m.message_id, m.body_encrypted),
            attachments.get(m.message_id, []),
            other_read,
        )
        for m in shown
    ]
    if mark_read and shown:
        reads.record_read(db, actor, thread.id, shown[-1].message_seq)
    return view, Page(messages, str(shown[-1].message_seq) if more else None)


# Writing


def check_body(settings: Settings, body: str, *, allow_empty: bool = False) -> str:
    if "\x00" in body:
        raise RefusedError(400, N_("The message contains a character that is not allowed."))
    if len(body) > settings.message_max_chars:
        raise RefusedError(
            413, f"Messages are limited to {settings.message_max_chars:,} characters."
        )
    if not body.strip() and not allow_empty:
        raise RefusedError(400, N_("Write a message first."))
    return body


@dataclass(frozen=True)
class Posted:
    """A message just written: what the caller needs to answer, without re-reading it."""

    id: str
    seq: int
    author_kind: str
    author_id: str
    created_at: datetime


def _message_rows(
    cipher: ThreadCipher,
    actor: Actor,
    message_id: str,
    moment: datetime,
    body: str,
    *,
    patient_id: str | FromGate,
    seq: int | FromGate,
) -> list[tuple[Table, dict[str, Any]]]:
    """The message (sealed) and, from a care team, the patient's notice of it."""
    message = {
        "id": message_id,
        "thread_id": cipher.thread_id,
        "seq": seq,
        "author_kind": actor.kind,
        "author_id": actor.id,
        "body_encrypted": cipher.seal_text(message_id, crypto.BODY, body),
        "created_at": moment,
    }
    rows: list[tuple[Table, dict[str, Any]]] = [(_MESSAGES, message)]
    if actor.for_care_team:
        # Same transaction: the notice exists if and only if the message does.
        rows.append(new_message_notice(patient_id=patient_id, thread_id=cipher.thread_id))
    return rows


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
    message_id = new_id("msg")
    rows = _message_rows(cipher, actor, message_id, moment, body, patient_id=patient_id, seq=seq)
    # The message, its notice and the audit record of this request: one round trip.
    insert_together(db, [*rows, *audit.take_staged(db)])
    return Posted(message_id, seq, actor.kind, actor.id, moment)


def create_thread(
    db: Session,
    keyring: Keyring,
    settings: Settings,
    actor: Actor,
    *,
    patient_id: str,
    subject: str,
    body: str,
    pool_id: str | None = None,
) -> tuple[Thread, Posted]:
    """Care teams open threads (patients reply in them), in the team-wide pool unless the
    opener routes it to one of the team's pools they see."""
    if actor.care_team_id is None:
        raise RefusedError(403, N_("Only a care team can start a conversation."))
    if pool_id is not None and not (
        may_see_pool(actor, pool_id) and pool_of_team(db, actor.care_team_id, pool_id)
    ):
        raise RefusedError(422, N_("No such pool in this care team."))
    subject = _check_subject(subject)
    check_body(settings, body)
    standing = eligibility(db, patient_id)
    if standing is Eligibility.UNKNOWN:
        raise RefusedError(422, N_("No such patient."))
    if standing is Eligibility.INELIGIBLE:
        # Terminated (or gone from the roster): no new conversations; existing ones stay.
        raise RefusedError(
            409,
            N_("This patient is no longer eligible: a conversation cannot be started."),
            denied=True,
        )
    _require_care(db, actor, patient_id, actor.care_team_id)
    thread_id = new_id("th")
    cipher, wrapped = crypto.new_thread_key(keyring, thread_id)
    moment = utcnow()
    thread = Thread(
        id=thread_id,
        patient_id=patient_id,
        care_team_id=actor.care_team_id,
        pool_id=pool_id,
        started_by="team",
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
    reads.record_read(db, actor, thread_id, 1)
    posted = _insert_message(
        db, cipher, actor, patient_id=patient_id, seq=1, moment=moment, body=body
    )
    events.thread_created(db, thread, posted.id)
    return thread, posted


def _require_care(db: Session, actor: Actor, patient_id: str, team_id: str) -> None:
    """A team opens a thread only with its patient: the first thread with a patient it
    never had starts their relationship; after one ENDED, staff start a new one
    explicitly (opening a thread does not silently bring it back)."""
    if relationships.active(db, patient_id, team_id) is not None:
        return
    if relationships.ever(db, patient_id, team_id):
        raise RefusedError(403, relationships.NO_ACTIVE)
    relationships.start(
        db, patient_id=patient_id, team_id=team_id, source="thread", actor=actor.participant
    )


def _check_subject(subject: str) -> str:
    subject = subject.strip()
    if not subject or len(subject) > MAX_SUBJECT or "\x00" in subject:
        raise RefusedError(400, f"The subject must be 1 to {MAX_SUBJECT} characters.")
    return subject


@dataclass(frozen=True)
class TeamChoice:
    """A care team a patient may write to, and the topics it offers."""

    id: str
    name: str
    topics: list[tuple[str, str]]  # (topic ID, label)


def teams_for_patient(db: Session, actor: Actor) -> list[TeamChoice]:
    """The patient's care teams (active relationships) that take patient-started threads."""
    if actor.kind != "patient":
        raise RefusedError(403, N_("Only a patient can list the care teams they may write to."))
    query = (
        select(CareTeam)
        .join(CareRelationship, CareRelationship.care_team_id == CareTeam.id)
        .where(
            CareRelationship.patient_id == actor.id,
            CareRelationship.ended_at.is_(None),
            CareTeam.patients_may_start.is_(True),
        )
        .order_by(CareTeam.name, CareTeam.id)
    )
    teams = list(db.scalars(query))
    topics: dict[str, list[tuple[str, str]]] = {}
    if teams:
        offered = (
            select(CareTeamTopic)
            .where(
                CareTeamTopic.care_team_id.in_([team.id for team in teams]),
                CareTeamTopic.retired_at.is_(None),
            )
            .order_by(CareTeamTopic.created_at, CareTeamTopic.id)
        )
        for topic in db.scalars(offered):
            topics.setdefault(topic.care_team_id, []).append((topic.id, topic.label))
    # A team with no topic offered cannot be written to: a thread needs one.
    return [TeamChoice(t.id, t.name, topics[t.id]) for t in teams if t.id in topics]


def start_by_patient(
    db: Session,
    keyring: Keyring,
    settings: Settings,
    actor: Actor,
    *,
    care_team_id: str,
    topic_id: str,
    subject: str,
    body: str,
) -> tuple[Thread, Posted]:
    """A patient writes first to one of their care teams, on a topic the team offers; the
    team's automatic first reply, if it has one, follows as the team's message."""
    if actor.kind != "patient":
        raise RefusedError(403, N_("Only a patient can write to a care team this way."))
    subject = _check_subject(subject)
    check_body(settings, body)
    team = db.get(CareTeam, care_team_id) if len(care_team_id) <= 40 else None
    # Not their team answers like no team at all: a patient learns no other team's ID.
    if team is None or relationships.active(db, actor.id, team.id) is None:
        raise RefusedError(404, N_("No such care team."))
    if not team.patients_may_start:
        raise RefusedError(403, N_("This care team does not take new conversations from patients."))
    topic = db.get(CareTeamTopic, topic_id) if len(topic_id) <= 40 else None
    if topic is None or topic.care_team_id != team.id or topic.retired_at is not None:
        raise RefusedError(422, N_("This care team offers no such topic."))
    thread_id = new_id("th")
    cipher, wrapped = crypto.new_thread_key(keyring, thread_id)
    moment = utcnow()
    thread = Thread(
        id=thread_id,
        patient_id=actor.id,
        care_team_id=team.id,
        started_by="patient",
        topic_id=topic.id,
        # The topic decides who on the team sees it (messaging.access.may_see).
        pool_id=topic.pool_id,
        subject_encrypted=cipher.seal_text(thread_id, crypto.SUBJECT, subject),
        status="open",
        data_key_wrapped=wrapped.wrapped,
        kek_id=wrapped.kek_id,
        last_seq=2 if team.auto_reply else 1,
        legal_hold=False,
        created_at=moment,
        last_message_at=moment,
    )
    db.add(thread)
    db.flush()
    reads.record_read(db, actor, thread_id, 1)
    posted = _insert_message(
        db, cipher, actor, patient_id=actor.id, seq=1, moment=moment, body=body
    )
    if team.auto_reply:
        # Sealed like every message; no notice: the patient is the one who just wrote.
        reply_id = new_id("msg")
        reply = {
            "id": reply_id,
            "thread_id": thread_id,
            "seq": 2,
            "author_kind": "app",
            "author_id": AUTO_REPLY_AUTHOR,
            "body_encrypted": cipher.seal_text(reply_id, crypto.BODY, team.auto_reply),
            "created_at": moment,
        }
        insert_together(db, [(_MESSAGES, reply)])
    events.thread_created(db, thread, posted.id)
    return thread, posted


def _next_seq(
    db: Session, keyring: Keyring, actor: Actor, thread_id: str, moment: datetime
) -> tuple[ThreadCipher, str, int]:
    """Take the thread's next message number (locking its row until commit) and, for a
    person, move the writer's side's read position to it; a refusal says why only to
    someone who may see the thread. On PostgreSQL both in one statement."""
    postgresql = db.get_bind().dialect.name == "postgresql"
    params = {
        "thread_id": thread_id,
        "owner": actor.care_team_id if actor.for_care_team else actor.id,
        "moment": moment,
        "participant": actor.side,
    }
    claimed: Any = None
    if not THREAD_ID.fullmatch(thread_id):
        pass
    elif postgresql and actor.is_person:
        claimed = _CLAIM_AND_ADVANCE[actor.for_care_team].first(db, params)
    elif postgresql:
        claimed = _CLAIM_DIRECT[actor.for_care_team].first(db, params)
    else:
        claimed = db.execute(_CLAIM[actor.for_care_team], params).first()
    if claimed is None:
        thread = load_thread(db, actor, thread_id)  # 404 or 410
        if thread.status != "open":
            raise RefusedError(409, N_("This conversation is closed."))
        if relationships.active(db, thread.patient_id, thread.care_team_id) is None:
            raise RefusedError(403, relationships.NO_ACTIVE)
        raise not_found()
    seq, patient_id, wrapped, kek_id = claimed
    if not postgresql:
        reads.record_read(db, actor, thread_id, seq)
    return crypto.open_thread_key(keyring, thread_id, wrapped, kek_id), patient_id, seq


def _check_pools(db: Session, actor: Actor, thread_id: str) -> None:
    """Staff limited to some pools post only where they see (404 elsewhere): the claim
    of the next number checks the team only, so their thread is looked up first."""
    if actor.pools is not None:
        load_thread(db, actor, thread_id)


def post_message(
    db: Session, keyring: Keyring, settings: Settings, actor: Actor, thread_id: str, *, body: str
) -> Posted:
    check_body(settings, body)
    _check_pools(db, actor, thread_id)
    moment = utcnow()
    posted = _post_under_recent_key(db, keyring, actor, thread_id, moment=moment, body=body)
    if posted is None:
        cipher, patient_id, seq = _next_seq(db, keyring, actor, thread_id, moment)
        posted = _insert_message(
            db, cipher, actor, patient_id=patient_id, seq=seq, moment=moment, body=body
        )
        events.message_created(db, thread_id, posted.id, actor.kind)
    return posted


def _post_under_recent_key(
    db: Session, keyring: Keyring, actor: Actor, thread_id: str, *, moment: datetime, body: str
) -> Posted | None:
    """PostgreSQL, with the thread's key at hand (crypto.recent_key): seal first, then
    claim the number and write the message, its notice, the read position, the audit
    record and its event for provider apps in one statement. None, with nothing written,
    when the claim fails (not the actor's thread, closed, or its key re-wrapped or
    shredded since): the caller takes the long way, which says why."""
    recent = crypto.recent_key(keyring, thread_id) if THREAD_ID.fullmatch(thread_id) else None
    if recent is None or db.get_bind().dialect.name != "postgresql":
        return None
    wrapped, cipher = recent
    message_id = new_id("msg")
    rows = _message_rows(
        cipher,
        actor,
        message_id,
        moment,
        body,
        patient_id=FromGate("patient_id"),
        seq=FromGate("last_seq"),
    )
    # Who hears of it is asked before the claim (one statement: the events' rows then go
    # in the claim's), so 3 round trips, not 6 (issue 20's first wave): for a thread
    # not the actor's the claim writes none of them, and nothing found is shown.
    told = events.message_created_rows(
        events.message_recipients(db, thread_id), thread_id, message_id, actor.kind
    )
    records = audit.take_staged(db)
    claimed = insert_gated(
        db,
        _CLAIM_GATE[actor.for_care_team, actor.is_person],
        {
            "thread_id": thread_id,
            "owner": actor.care_team_id if actor.for_care_team else actor.id,
            "moment": moment,
            "participant": actor.side,
            "wrapped": wrapped,
        },
        [*rows, *records, *told],
    )
    if claimed is None:
        audit.restage(db, records)
        return None
    return Posted(message_id, claimed[0], actor.kind, actor.id, moment)


def check_attachment(settings: Settings, content: bytes) -> str:
    """The detected content type, or a refusal (413 too big, 415 not an allowed type)."""
    if len(content) > settings.attachment_max_bytes:
        raise RefusedError(
            413, f"Attachments are limited to {settings.attachment_max_bytes:,} bytes."
        )
    if not content:
        raise RefusedError(400, N_("The file is empty."))
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
    _check_pools(db, actor, thread_id)
    moment = utcnow()
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
    events.message_created(db, thread_id, message.id, actor.kind)
    return message, attachment


def download(
    db: Session, keyring: Keyring, actor: Actor, thread_id: str, attachment_id: str
) -> Download:
    thread = load_thread(db, actor, thread_id)
    attachment = db.get(Attachment, attachment_id)
    if attachment is None or attachment.thread_id != thread.id:
        raise RefusedError(404, N_("No such attachment."))
    cipher = crypto.cipher_for(keyring, thread)
    return Download(
        filename=cipher.open_text(attachment.id, crypto.FILENAME, attachment.filename_encrypted),
        content_type=attachment.content_type,
        content=cipher.open(attachment.id, crypto.CONTENT, attachment.content_encrypted),
    )


def mark_read(db: Session, actor: Actor, thread_id: str, through: int | None) -> int:
    """A person marks their side's read position (a care team's: for all its staff);
    answers the side's position. An app's own token reads for nobody: refused."""
    thread = load_thread(db, actor, thread_id)
    if not actor.is_person:
        raise RefusedError(
            403, N_("An app's own token reads for no person: it cannot mark messages read.")
        )
    seq = thread.last_seq if through is None else max(0, min(through, thread.last_seq))
    before = reads.position(db, actor, thread.id)
    reads.record_read(db, actor, thread.id, seq)
    if seq > before:
        reader = "care_team" if actor.for_care_team else "patient"
        events.message_read(db, thread, reader=reader, through_seq=seq)
    return seq


def close_thread(db: Session, actor: Actor, thread_id: str) -> None:
    thread = load_thread(db, actor, thread_id, lock=True)
    if not actor.for_care_team:
        raise RefusedError(403, N_("Only the care team can close a conversation."))
    if thread.status != "closed":
        thread.status = "closed"
        thread.closed_at = utcnow()
        events.thread_closed(db, thread)
