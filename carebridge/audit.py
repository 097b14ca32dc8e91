"""The hash-chained, append-only audit log.

Each record stores ``hash = SHA-256(prev_hash || canonical content)``, so editing,
deleting or re-ordering a chained record breaks the chain at that record, and
``carebridge audit verify`` names it. Records carry identifiers and generic action names
only, never PHI values (ARCHITECTURE.md invariants 1 and 5).

``append()`` writes the record in the caller's transaction, so it commits or rolls back
with the change it describes. Linking it into the chain is a separate step:

- On PostgreSQL the record is inserted unchained (its ``seq`` from a sequence, no lock)
  and :func:`chain_pending` links committed records in batches, in the order it finds
  them, under an advisory lock that only chainers take. A chain lock held by every
  request until its commit made the chain the service's throughput ceiling; the price is
  a window of about a second (``audit_chain_seconds``) in which a new record is written
  but not yet chained, so tampering with it then would not show.
- On SQLite every transaction already holds the database's write lock (it begins
  IMMEDIATE, see carebridge.db), so the record is chained inline, at no extra cost.

``link`` is the chain position (1, 2, 3, ...). ``seq`` identifies the record and is part
of what its hash covers; records chained inline have ``seq == link``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    CompoundSelect,
    Index,
    Select,
    Sequence,
    String,
    Table,
    bindparam,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.orm import Mapped, Session, SessionTransaction, mapped_column, sessionmaker

from carebridge.db import Base, DirectStatement, transaction
from carebridge.utc import UtcDateTime

GENESIS = "0" * 64
# An arbitrary constant naming "the audit chainer" among PostgreSQL advisory locks.
_CHAIN_LOCK_KEY = 0x0CA7EB1D6E


class Outcome(StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    FAILED = "failed"


class AuditRecord(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        CheckConstraint("outcome IN ('allowed', 'denied', 'failed')", name="outcome"),
        # What the chainer looks for: records not yet linked.
        Index(
            "ix_audit_log_unchained",
            "seq",
            postgresql_where=text("link IS NULL"),
            sqlite_where=text("link IS NULL"),
        ),
    )

    # PostgreSQL numbers records from a sequence (no lock); SQLite inline, as the link.
    seq: Mapped[int] = mapped_column(
        BigInteger, Sequence("audit_log_seq"), primary_key=True, autoincrement=False
    )
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(64))
    # The chain: position, previous record's hash, this record's hash; NULL until linked.
    link: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64), unique=True)


def _canonical_time(at: datetime) -> str:
    # SQLite hands datetimes back naive; every stored time is UTC.
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    # "%Y-%m-%dT%H:%M:%S.%fZ", in a third less time than strftime.
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def record_hash(
    prev_hash: str,
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    target: str | None,
    outcome: str,
    request_id: str | None,
) -> str:
    content = json.dumps(
        [seq, _canonical_time(at), actor, action, target, outcome, request_id],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(prev_hash.encode("ascii") + content.encode("ascii")).hexdigest()


def _hash_of(record: Any, prev_hash: str) -> str:
    return record_hash(
        prev_hash,
        seq=record.seq,
        at=record.at,
        actor=record.actor,
        action=record.action,
        target=record.target,
        outcome=record.outcome,
        request_id=record.request_id,
    )


_RECORDS: Table = AuditRecord.__table__  # type: ignore[assignment]
_C = _RECORDS.c
# Built once: every request that changes anything appends, and building and caching a
# statement costs more than running it.
_HEAD = select(_C.link, _C.hash).where(_C.link.is_not(None)).order_by(_C.link.desc()).limit(1)
_INSERT = insert(_RECORDS)
# What a record's hash covers, in order (record_hash's fields).
_HASHED = ("seq", "at", "actor", "action", "target", "outcome", "request_id")
_PENDING = (
    select(*(_C[column] for column in _HASHED))
    .where(_C.link.is_(None))
    .order_by(_C.seq)
    .limit(bindparam("limit"))
)
# The chainer's reads, thousands of rows a batch: tuples, past SQLAlchemy's result rows.
_PENDING_DIRECT = DirectStatement(_PENDING)
# A whole batch in one statement (PostgreSQL arrays): an executemany costs ~0.2 ms a row.
# The arrays travel as comma-joined text (numbers and hex digests hold no commas): the
# driver adapts a list element by element, ~5 µs a record, more than hashing it.
_LINK = text(
    "UPDATE audit_log SET link = v.link, prev_hash = v.prev, hash = v.digest "
    "FROM unnest(CAST(string_to_array(:seqs, ',') AS bigint[]), "
    "CAST(string_to_array(:links, ',') AS bigint[]), "
    "string_to_array(:prevs, ','), string_to_array(:digests, ',')) "
    "AS v(seq, link, prev, digest) "
    "WHERE audit_log.seq = v.seq AND audit_log.link IS NULL"
)
_COUNT_PENDING = select(func.count()).select_from(_RECORDS).where(_C.link.is_(None))
_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")


_STAGED = "carebridge.audit.staged"
Q = TypeVar("Q", Select[Any], CompoundSelect[Any])


def _postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _values(
    *, actor: str, action: str, outcome: Outcome, target: str | None, request_id: str | None
) -> dict[str, Any]:
    # No seq: on PostgreSQL the sequence numbers the record when it is written.
    return {
        "at": datetime.now(UTC),
        "actor": actor,
        "action": action,
        "target": target,
        "outcome": outcome.value,
        "request_id": request_id,
    }


def _write(session: Session, values: dict[str, Any]) -> None:
    connection = session.connection()
    if _postgresql(session):
        connection.execute(_INSERT, values)  # chained later
        return
    # SQLite: this transaction holds the write lock; chain the record now.
    head = connection.execute(_HEAD).first()
    position, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS)
    values.update(seq=position, link=position, prev_hash=prev_hash)
    values["hash"] = record_hash(prev_hash, **{k: values[k] for k in _HASHED})
    connection.execute(_INSERT, values)


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    outcome: Outcome,
    target: str | None = None,
    request_id: str | None = None,
) -> None:
    """Add a record inside the caller's transaction.

    The record commits or rolls back with the change it describes. Callers recording a
    denial or failure whose own transaction rolls back use a transaction of their own.
    """
    values = _values(
        actor=actor, action=action, outcome=outcome, target=target, request_id=request_id
    )
    _write(session, values)


def stage(
    session: Session,
    *,
    actor: str,
    action: str,
    outcome: Outcome,
    target: str | None = None,
    request_id: str | None = None,
) -> None:
    """Like :func:`append`, but on PostgreSQL the INSERT waits for the transaction's
    commit, or for a hot path that writes it along with its own rows
    (:func:`take_staged` and carebridge.db.insert_together): one round trip fewer.
    A rollback discards it with everything else."""
    values = _values(
        actor=actor, action=action, outcome=outcome, target=target, request_id=request_id
    )
    if _postgresql(session):
        session.info.setdefault(_STAGED, []).append(values)
    else:
        _write(session, values)


def take_staged(session: Session) -> list[tuple[Table, dict[str, Any]]]:
    """The records staged in this transaction, as rows for the caller to insert now."""
    return [(_RECORDS, values) for values in session.info.pop(_STAGED, [])]


def restage(session: Session, records: list[tuple[Table, dict[str, Any]]]) -> None:
    """Stage again records taken with :func:`take_staged` that were not written after
    all (a statement that wrote nothing): the transaction's commit writes them."""
    if records:
        session.info.setdefault(_STAGED, []).extend(values for _, values in records)


# What a record is written with (_values): all it hashes but the seq, numbered on insert.
_STAGED_COLUMNS = tuple(column for column in _HASHED if column != "seq")
# A record written by another statement (PostgreSQL's data-modifying CTEs).
_INSERT_CTE = (
    insert(_RECORDS)
    .values({column: bindparam(f"audit_{column}") for column in _STAGED_COLUMNS})
    .cte("audit_record")
)


def with_record(statement: Q) -> Q:
    """``statement``, also writing one audit record when run with the parameters
    :func:`take_staged_params` gives (PostgreSQL only). Build it once, at import."""
    return statement.add_cte(_INSERT_CTE)


def take_staged_params(session: Session) -> dict[str, Any] | None:
    """If exactly one record is staged (PostgreSQL), take it as the parameters of a
    statement built with :func:`with_record`; else None, and nothing is taken."""
    staged = session.info.get(_STAGED)
    if not staged or len(staged) != 1:
        return None
    (values,) = session.info.pop(_STAGED)
    return {f"audit_{column}": values[column] for column in _STAGED_COLUMNS}


@event.listens_for(Session, "before_commit")
def _write_staged(session: Session) -> None:
    staged = session.info.pop(_STAGED, None)
    if staged:
        session.connection().execute(_INSERT, staged)


@event.listens_for(Session, "after_transaction_end")
def _drop_staged(session: Session, transaction: SessionTransaction) -> None:
    # The whole transaction ended (rolled back: a commit already wrote them). Not a
    # savepoint's rollback: that leaves the transaction, and its records, going on.
    if transaction.parent is None:
        session.info.pop(_STAGED, None)


def chain_pending(session: Session, *, limit: int = 5000) -> int:
    """Link committed, unchained records into the chain, oldest ``seq`` first; returns
    how many. Run in a transaction of its own; a chainer already at work elsewhere makes
    this one return 0 at once instead of waiting."""
    if not _postgresql(session):
        return 0  # chained inline
    connection = session.connection()
    if not connection.execute(_TRY_LOCK, {"key": _CHAIN_LOCK_KEY}).scalar():
        return 0
    pending = _PENDING_DIRECT.rows(session, {"limit": limit})
    if not pending:
        return 0
    head = connection.execute(_HEAD).first()
    position, prev_hash = (head[0], head[1]) if head else (0, GENESIS)
    seqs, links, prevs, digests = [], [], [], []
    for row in pending:
        record = dict(zip(_HASHED, row, strict=True))
        position += 1
        digest = record_hash(prev_hash, **record)
        seqs.append(record["seq"])
        links.append(position)
        prevs.append(prev_hash)
        digests.append(digest)
        prev_hash = digest
    linked = connection.execute(
        _LINK,
        {
            "seqs": ",".join(map(str, seqs)),
            "links": ",".join(map(str, links)),
            "prevs": ",".join(prevs),
            "digests": ",".join(digests),
        },
    )
    if linked.rowcount != len(seqs):
        # Only chainers link, under the lock: anything else is a fault, not a race.
        raise RuntimeError("audit records changed while being chained; nothing was linked")
    return len(seqs)


def chain_all(sessions: sessionmaker[Session]) -> int:
    """Chain every pending record now (the CLI, the worker, tests): batch after batch."""
    total = 0
    while True:
        with transaction(sessions) as session:
            linked = chain_pending(session)
        total += linked
        if linked == 0:
            return total


@dataclass(frozen=True)
class Verification:
    records: int
    head: str
    broken_at: int | None = None
    reason: str = ""
    pending: int = 0

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def _walk(session: Session) -> Iterator[Any]:
    query = (
        select(_RECORDS)
        .where(_C.link.is_not(None))
        .order_by(_C.link)
        .execution_options(yield_per=1000)
    )
    yield from session.execute(query)


def verify(session: Session) -> Verification:
    """Walk the chain from the first link; report the first record that breaks it, and
    how many records are written but not yet chained."""
    expected, prev_hash, count = 1, GENESIS, 0
    pending = int(session.execute(_COUNT_PENDING).scalar_one())
    for record in _walk(session):
        if record.link != expected:
            return Verification(
                count,
                prev_hash,
                expected,
                f"record {expected} is missing (next record is {record.link})",
                pending,
            )
        if record.prev_hash != prev_hash:
            return Verification(
                count, prev_hash, expected, "it does not link to the record before it", pending
            )
        if _hash_of(record, prev_hash) != record.hash:
            return Verification(
                count,
                prev_hash,
                expected,
                "its content does not match its hash (modified)",
                pending,
            )
        expected, prev_hash, count = expected + 1, record.hash, count + 1
    return Verification(count, prev_hash, pending=pending)
