"""The hash-chained, append-only audit log.

Each record stores ``hash = SHA-256(prev_hash || canonical content)``, so editing,
deleting or re-ordering a record breaks the chain at that record, and
``carebridge audit verify`` names it. Records carry identifiers and generic action names
only, never PHI values (ARCHITECTURE.md invariants 1 and 5).

Appends are serialized so the chain stays linear with many writers: PostgreSQL takes a
transaction-scoped advisory lock, SQLite already holds its database write lock because
every transaction there begins IMMEDIATE (see carebridge.db). The record's sequence
number is the primary key, so even a writer that skipped the lock could not fork the
chain; it would fail on the duplicate key instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, DateTime, String, Table, insert, select, text
from sqlalchemy.orm import Mapped, Session, make_transient_to_detached, mapped_column

from carebridge.db import Base

GENESIS = "0" * 64
# An arbitrary constant naming "the audit chain" among PostgreSQL advisory locks.
_CHAIN_LOCK_KEY = 0x0CA7EB1D6E


class Outcome(StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    FAILED = "failed"


class AuditRecord(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        CheckConstraint("outcome IN ('allowed', 'denied', 'failed')", name="outcome"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


def _canonical_time(at: datetime) -> str:
    # SQLite hands datetimes back naive; every stored time is UTC.
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


def _hash_of(record: AuditRecord) -> str:
    return record_hash(
        record.prev_hash,
        seq=record.seq,
        at=record.at,
        actor=record.actor,
        action=record.action,
        target=record.target,
        outcome=record.outcome,
        request_id=record.request_id,
    )


_RECORDS: Table = AuditRecord.__table__  # type: ignore[assignment]
_COLUMNS = tuple(column.key for column in _RECORDS.columns)
# Built once: every request that changes anything appends, and building and caching a
# statement costs more than running it.
_HEAD = select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)
_INSERT = insert(_RECORDS)


def _lock_chain(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK_KEY})


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    outcome: Outcome,
    target: str | None = None,
    request_id: str | None = None,
) -> AuditRecord:
    """Add a record to the chain inside the caller's transaction.

    The record commits or rolls back with the change it describes. Callers recording a
    denial or failure whose own transaction rolls back use a transaction of their own.
    """
    _lock_chain(session)
    last = session.execute(_HEAD).first()
    seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS)
    record = AuditRecord(
        seq=seq,
        at=datetime.now(UTC),
        actor=actor,
        action=action,
        target=target,
        outcome=outcome.value,
        request_id=request_id,
        prev_hash=prev_hash,
    )
    record.hash = _hash_of(record)
    # A plain INSERT, then the record joins the session as if loaded: what add() + flush()
    # did (pending changes flushed, the row written, a persistent object returned) without
    # the unit of work's cost on every request.
    session.flush()
    session.connection().execute(_INSERT, {name: getattr(record, name) for name in _COLUMNS})
    make_transient_to_detached(record)
    session.add(record)
    return record


@dataclass(frozen=True)
class Verification:
    records: int
    head: str
    broken_at: int | None = None
    reason: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def _walk(session: Session) -> Iterator[AuditRecord]:
    query = select(AuditRecord).order_by(AuditRecord.seq).execution_options(yield_per=1000)
    yield from session.scalars(query)


def verify(session: Session) -> Verification:
    """Walk the chain from the first record; report the first record that breaks it."""
    expected_seq, prev_hash, count = 1, GENESIS, 0
    for record in _walk(session):
        if record.seq != expected_seq:
            return Verification(
                count,
                prev_hash,
                expected_seq,
                f"record {expected_seq} is missing (next record is {record.seq})",
            )
        if record.prev_hash != prev_hash:
            return Verification(
                count, prev_hash, record.seq, "it does not link to the record before it"
            )
        if _hash_of(record) != record.hash:
            return Verification(
                count, prev_hash, record.seq, "its content does not match its hash (modified)"
            )
        expected_seq, prev_hash, count = expected_seq + 1, record.hash, count + 1
    return Verification(count, prev_hash)
