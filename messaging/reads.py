"""Read state: how far each side of a thread has read it, unread counts, read receipts.

A thread has two sides, the patient and the care team. A side's position (the seq of the
last message it read) only moves forward: when a person on that side reads
(:func:`record_read`), or writes (a post moves its writer's side: messaging.threads claims
the message's number and moves the position in one statement). A care team has read a
message when any of its staff did; an app's own token (client credentials) reads and
writes for nobody, so it moves nothing. Which person read is in the audit log (the
request's record names them); the other side learns only "read".

Unread counts are the other side's messages after one's position. For the patient that
is every message after it (the patient's own posts move it past their messages); for the
team, the patient's messages after it (an app's posts move nothing), counted on
ix_message_patient_seq, which holds the patient's messages only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    DateTime,
    Table,
    and_,
    bindparam,
    case,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.orm import Session

from carebridge.utc import utcnow
from messaging.access import Actor, sees_pool_of
from messaging.models import CareTeam, Message, Thread, ThreadReadState

PATIENT = "patient"
TEAM = "team"
OTHER_SIDE = {PATIENT: TEAM, TEAM: PATIENT}

READ_STATES = cast(Table, ThreadReadState.__table__)
_MESSAGES = cast(Table, Message.__table__)
_THREADS = cast(Table, Thread.__table__)
_TEAMS = cast(Table, CareTeam.__table__)

# The upsert run on its own, on both backends: one constant text (the dialects'
# insert().on_conflict_do_update() is compiled again on every execution). PostgreSQL and
# SQLite (3.24+) both speak this form. A read position only moves forward.
ADVANCE = text(
    "INSERT INTO thread_read_state (thread_id, participant, last_read_seq, updated_at)"
    " VALUES (:thread_id, :participant, :seq, :now)"
    " ON CONFLICT (thread_id, participant) DO UPDATE"
    " SET last_read_seq = excluded.last_read_seq, updated_at = excluded.updated_at"
    " WHERE thread_read_state.last_read_seq < excluded.last_read_seq"
).bindparams(bindparam("now", type_=DateTime(timezone=True)))


def position(db: Session, actor: Actor, thread_id: str) -> int:
    """How far ``actor``'s side has read ``thread_id`` (0: never)."""
    seq = db.scalar(
        select(READ_STATES.c.last_read_seq).where(
            READ_STATES.c.thread_id == thread_id, READ_STATES.c.participant == actor.side
        )
    )
    return int(seq or 0)


def record_read(db: Session, actor: Actor, thread_id: str, seq: int) -> None:
    """The one place a person's read of a thread is recorded: ``actor``'s side has read
    ``thread_id`` through message ``seq`` (moved forward, never back). An app's own token
    reads for nobody: nothing is recorded. (A post moves its writer's side too, inside
    the post's claim statement on PostgreSQL: messaging.threads._advanced.)"""
    if not actor.is_person:
        return
    db.execute(
        ADVANCE,
        {"thread_id": thread_id, "participant": actor.side, "seq": seq, "now": utcnow()},
    )


def unread_of(side: str, position: Any) -> Any:
    """A thread's unread count for ``side``, whose read position is ``position`` (a
    column, NULL where the side never read), correlated to the thread table."""
    read = func.coalesce(position, 0)
    if side == PATIENT:
        return _THREADS.c.last_seq - read
    return (
        select(func.count())
        .where(
            _MESSAGES.c.thread_id == _THREADS.c.id,
            # A literal, not a parameter: a prepared statement's generic plan can use the
            # partial index only if the predicate is in the SQL.
            _MESSAGES.c.author_kind == literal_column("'patient'"),
            _MESSAGES.c.seq > read,
        )
        .scalar_subquery()
    )


def position_of(alias: Any, parameter: str) -> Any:
    """The join condition of a thread's read-state row for the side named by the bound
    ``parameter``."""
    return and_(alias.c.thread_id == _THREADS.c.id, alias.c.participant == bindparam(parameter))


def sides(actor: Actor) -> dict[str, str]:
    """The bound parameters position_of names: the actor's side and the other."""
    return {"side": actor.side, "other_side": OTHER_SIDE[actor.side]}


@dataclass(frozen=True)
class TeamUnread:
    """Unread messages for the caller's side in the threads with one care team."""

    care_team_id: str
    care_team_name: str
    unread_messages: int
    unread_threads: int


def unread_by_team(db: Session, actor: Actor) -> list[TeamUnread]:
    """The caller's unread messages and threads, per care team: a team's token gets its
    team's line (zeros included); a patient one line per team they have threads with."""
    mine = READ_STATES.alias("mine")
    owner = (
        and_(
            _THREADS.c.care_team_id == actor.care_team_id,
            # Staff count only the threads they may see (messaging.access.may_see).
            sees_pool_of(actor, _THREADS.c.pool_id, _THREADS.c.id),
        )
        if actor.for_care_team
        else _THREADS.c.patient_id == actor.id
    )
    per_thread = (
        select(
            _THREADS.c.care_team_id,
            unread_of(actor.side, mine.c.last_read_seq).label("unread"),
        )
        .select_from(_THREADS.outerjoin(mine, position_of(mine, "side")))
        .where(owner, _THREADS.c.data_key_wrapped.is_not(None))
        .subquery("per_thread")
    )
    query = (
        select(
            _TEAMS.c.id,
            _TEAMS.c.name,
            func.coalesce(func.sum(per_thread.c.unread), 0),
            func.coalesce(func.sum(case((per_thread.c.unread > 0, 1), else_=0)), 0),
        )
        .select_from(_TEAMS.join(per_thread, per_thread.c.care_team_id == _TEAMS.c.id))
        .group_by(_TEAMS.c.id, _TEAMS.c.name)
        .order_by(_TEAMS.c.name, _TEAMS.c.id)
    )
    rows = db.execute(query, {"side": actor.side}).all()
    found = [TeamUnread(row[0], row[1], int(row[2]), int(row[3])) for row in rows]
    if actor.for_care_team and not found:
        name = db.execute(select(_TEAMS.c.name).where(_TEAMS.c.id == actor.care_team_id))
        return [TeamUnread(str(actor.care_team_id), name.scalar_one(), 0, 0)]
    return found


def unread_total(db: Session, actor: Actor) -> int:
    return sum(team.unread_messages for team in unread_by_team(db, actor))
