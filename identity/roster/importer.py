"""``carebridge roster import``: a roster file into ``roster_member``, all or nothing.

One transaction. The file is streamed in batches: each batch is validated, hashed and
encrypted in Python (one HMAC key setup per purpose and one AES-GCM key for the whole
import), then its members are looked up by ``member_key`` and written: new members get a
fresh row ID and a random patient ID, known ones keep theirs. PostgreSQL takes the rows
by ``COPY`` (updates through a temporary staging table); SQLite by ``executemany``.
Nothing personal outlives its batch.

Any invalid row refuses the whole import unless ``skip_invalid``; a refused import writes
only its ``roster_import`` row (outcome "refused", counts) and a denied audit event, in a
transaction of its own. Row errors go to ``on_error`` as they are found, line by line.

An import is a batch job wherever it starts: its transaction has the CLI's database
budget (``CAREBRIDGE_DB_TIMEOUT_CLI_SECONDS``) in a web process too (the admin API), whose
own few seconds a large roster outlives (a million members: about 95 s).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Table, bindparam, case, func, insert, select, text, update
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.keyring import associated_data
from carebridge.runtime import Runtime, database_budget
from carebridge.settings import Role
from identity import events
from identity.interfaces import PatientFollowers
from identity.models import PatientLink, RosterImport, RosterMember, new_id
from identity.roster.csv_format import (
    RejectedRow,
    RosterFormatError,
    RosterRow,
    RowError,
    parse_columns,
    read,
)
from identity.roster.hashes import RosterHashes

log = logging.getLogger(__name__)

BATCH = 5000
_SOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# An arbitrary constant naming "roster imports" among PostgreSQL advisory locks: two
# imports never interleave (SQLite's write lock does the same there).
_IMPORT_LOCK_KEY = 0x0CA7E057E2
_MEMBER: Table = RosterMember.__table__  # type: ignore[assignment]
_MEMBER_COLUMNS = (
    "id",
    "source",
    "member_key",
    "patient_id",
    "identity_hash",
    "dob_hash",
    "last_name_hash",
    "zip_hash",
    "details_encrypted",
    "eligible",
    "terminated_at",
    "created_at",
    "updated_at",
    "last_import_id",
)
_STAGED_COLUMNS = (
    "id",
    "identity_hash",
    "dob_hash",
    "last_name_hash",
    "zip_hash",
    "details_encrypted",
    "terminated",
)


class ImportRefusedError(Exception):
    """Nothing was imported; the message is one line without values."""

    def __init__(self, message: str, result: ImportResult) -> None:
        super().__init__(message)
        self.result = result


class SourceError(ValueError):
    """Not a usable source name."""


@dataclass
class ImportResult:
    import_id: str
    source: str
    mode: str
    rows: int = 0
    imported: int = 0
    updated: int = 0
    ineligible: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class SourceStats:
    members: int
    eligible: int
    terminated: int
    linked: int
    last_import: RosterImport | None


def check_source(source: str) -> str:
    if not _SOURCE.fullmatch(source):
        raise SourceError(
            "a source name is 1 to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return source


def import_roster(
    rt: Runtime,
    path: Path | IO[bytes],
    *,
    source: str,
    partial: bool = False,
    skip_invalid: bool = False,
    columns: str | None = None,
    on_error: Callable[[RowError], None] = lambda error: None,
    on_progress: Callable[[int], None] | None = None,
    actor: str = "operator",
    name: str | None = None,
    followers: PatientFollowers,
) -> ImportResult:
    """Import ``path`` (a file, or an open binary stream: the admin API's upload) for
    ``source``; raises :class:`ImportRefusedError` when nothing was. ``name`` is what
    messages call the file (default: its path); ``actor`` is who the audit log names.
    The clients following a member whose eligibility this import ended (``followers``,
    and the apps of its linked account) are told: ``patient.roster_link_ended``."""
    check_source(source)
    result = ImportResult(new_id("ri"), source, "partial" if partial else "full")
    started = datetime.now(UTC)
    try:
        mapping = parse_columns(columns)
        with transaction(rt.sessions, database_budget(rt.settings, Role.CLI)) as db:
            _run(
                db,
                rt=rt,
                path=path,
                name=name or (str(path) if isinstance(path, Path) else "upload"),
                actor=actor,
                columns=mapping,
                result=result,
                started=started,
                skip_invalid=skip_invalid,
                on_error=on_error,
                on_progress=on_progress,
            )
            events.roster_links_ended(db, followers, _ended(db, result, started))
    except (RosterFormatError, _RefusedError) as exc:
        _record_refusal(rt, result, started, actor)
        raise ImportRefusedError(str(exc), result) from None
    log.info(
        "roster import committed",
        extra={"import_id": result.import_id, "source": source, "rows": result.rows},
    )
    return result


class _RefusedError(Exception):
    pass


def _run(
    db: Session,
    *,
    rt: Runtime,
    path: Path | IO[bytes],
    name: str,
    actor: str,
    columns: dict[str, str],
    result: ImportResult,
    started: datetime,
    skip_invalid: bool,
    on_error: Callable[[RowError], None],
    on_progress: Callable[[int], None] | None,
) -> None:
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _IMPORT_LOCK_KEY})
    record = RosterImport(
        id=result.import_id,
        source=result.source,
        mode=result.mode,
        outcome="running",
        started_at=started,
        rows=0,
        imported=0,
        updated=0,
        ineligible=0,
        rejected=0,
    )
    db.add(record)
    db.flush()
    connection = db.connection()
    writer: _Writer = (
        _PostgresWriter(connection)
        if connection.dialect.name == "postgresql"
        else _Writer(connection)
    )
    batcher = _Batcher(rt, writer, result, started, on_error)
    batch: list[RosterRow | RejectedRow] = []
    for row in read(path, columns, name=name):
        batch.append(row)
        if len(batch) >= BATCH:
            batcher.write(batch)
            batch.clear()
            if on_progress is not None:
                on_progress(result.rows)
    batcher.write(batch)
    batch.clear()
    if on_progress is not None:
        on_progress(result.rows)
    if result.rejected and not skip_invalid:
        noun = "row" if result.rejected == 1 else "rows"
        raise _RefusedError(
            f"{name}: {result.rejected} invalid {noun}; nothing was imported "
            "(correct them, or rerun with --skip-invalid)"
        )
    if result.imported + result.updated == 0:
        # A full import of nothing would make every member ineligible: never on purpose.
        raise _RefusedError(f"{name}: no valid rows; nothing was imported")
    if result.mode == "full":
        result.ineligible += writer.retire_absent(result.source, result.import_id, started)
    for count in ("rows", "imported", "updated", "ineligible", "rejected"):
        setattr(record, count, getattr(result, count))
    record.outcome = "imported"
    record.finished_at = datetime.now(UTC)
    audit.append(
        db,
        actor=actor,
        action="roster.import",
        target=f"roster-source:{result.source}",
        outcome=Outcome.ALLOWED,
    )


def _ended(db: Session, result: ImportResult, started: datetime) -> list[str]:
    """The patient IDs of the members this import made ineligible: terminated now (a
    termination keeps its first moment, so one already terminated is not counted again),
    or left out of a full import (retired now, by :meth:`_Writer.retire_absent`)."""
    member = RosterMember
    return list(
        db.scalars(
            select(member.patient_id).where(
                member.source == result.source,
                member.eligible.is_(False),
                (member.terminated_at == started)
                | ((member.updated_at == started) & (member.last_import_id != result.import_id)),
            )
        )
    )


def _record_refusal(rt: Runtime, result: ImportResult, started: datetime, actor: str) -> None:
    with transaction(rt.sessions) as db:
        db.add(
            RosterImport(
                id=result.import_id,
                source=result.source,
                mode=result.mode,
                outcome="refused",
                started_at=started,
                finished_at=datetime.now(UTC),
                rows=result.rows,
                imported=0,
                updated=0,
                ineligible=0,
                rejected=result.rejected,
            )
        )
        audit.append(
            db,
            actor=actor,
            action="roster.import",
            target=f"roster-source:{result.source}",
            outcome=Outcome.DENIED,
        )


class _Batcher:
    """Turns a batch of parsed rows into rows for the writer; holds nothing between batches."""

    def __init__(
        self,
        rt: Runtime,
        writer: _Writer,
        result: ImportResult,
        now: datetime,
        on_error: Callable[[RowError], None],
    ) -> None:
        self.hashes = RosterHashes(rt.keyring)
        self.encrypt = rt.keyring.encryptor()
        self.writer = writer
        self.result = result
        self.now = now
        self.on_error = on_error

    def write(self, batch: list[RosterRow | RejectedRow]) -> None:
        if not batch:
            return
        result, source = self.result, self.result.source
        keys = [
            self.hashes.member_key(source, row.member_id) if row.member_id is not None else None
            for row in batch
        ]
        known = self.writer.lookup([key for key in keys if key is not None])
        seen: set[str] = set()
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        keep: list[str] = []
        errors: list[RowError] = []
        for row, key in zip(batch, keys, strict=True):
            result.rows += 1
            duplicate = key is not None and (
                key in seen or (key in known and known[key][1] == result.import_id)
            )
            if key is not None:
                seen.add(key)
            if isinstance(row, RejectedRow) or duplicate:
                result.rejected += 1
                if isinstance(row, RejectedRow):
                    errors.extend(row.errors)
                    # A known member whose row is broken stays as it was: not updated,
                    # and not retired as missing either.
                    if key is not None and key in known and not duplicate:
                        keep.append(key)
                else:
                    errors.append(
                        RowError(row.line, "member_id", "appears more than once in the file")
                    )
                continue
            if key is None:  # a valid row always has a member ID
                continue
            if row.terminated:
                result.ineligible += 1
            if key in known:
                row_id = known[key][0]
                updates.append((row_id, *self._sealed(row, row_id), row.terminated))
                result.updated += 1
            else:
                row_id = new_id("rm")
                inserts.append(
                    (
                        row_id,
                        source,
                        key,
                        new_id("pt"),
                        *self._sealed(row, row_id),
                        not row.terminated,
                        self.now if row.terminated else None,
                        self.now,
                        self.now,
                        result.import_id,
                    )
                )
                result.imported += 1
        for error in sorted(errors, key=lambda error: error.line):
            self.on_error(error)
        self.writer.insert(inserts)
        self.writer.update(updates, result.import_id, self.now)
        self.writer.keep(keep, result.import_id)

    def _sealed(self, row: RosterRow, row_id: str) -> tuple[str, str, str, str, bytes]:
        details = json.dumps(
            {
                "first_name": row.first_name,
                "last_name": row.last_name,
                "zip": row.zip,
                "group": row.group,
                "member_id": row.member_id,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")
        return (
            self.hashes.identity(row.dob, row.ssn4),
            self.hashes.dob(row.dob),
            self.hashes.last_name(row.last_name),
            self.hashes.zip(row.zip),
            self.encrypt(details, associated_data("roster-member", row_id)),
        )


class _Writer:
    """Portable SQL (SQLite): executemany through SQLAlchemy Core."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def lookup(self, keys: list[str]) -> dict[str, tuple[str, str]]:
        """member_key -> (row id, last import ID) for the members already known."""
        if not keys:
            return {}
        query = select(_MEMBER.c.member_key, _MEMBER.c.id, _MEMBER.c.last_import_id).where(
            _MEMBER.c.member_key.in_(keys)
        )
        return {key: (row_id, last) for key, row_id, last in self.connection.execute(query)}

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self.connection.execute(
                insert(_MEMBER), [dict(zip(_MEMBER_COLUMNS, row, strict=True)) for row in rows]
            )

    def update(self, rows: list[tuple[Any, ...]], import_id: str, now: datetime) -> None:
        if not rows:
            return
        c = _MEMBER.c
        statement = (
            update(_MEMBER)
            .where(c.id == bindparam("b_id"))
            .values(
                identity_hash=bindparam("b_identity_hash"),
                dob_hash=bindparam("b_dob_hash"),
                last_name_hash=bindparam("b_last_name_hash"),
                zip_hash=bindparam("b_zip_hash"),
                details_encrypted=bindparam("b_details_encrypted"),
                eligible=~bindparam("b_terminated", type_=c.eligible.type),
                terminated_at=case(
                    (
                        bindparam("b_terminated", type_=c.eligible.type),
                        func.coalesce(c.terminated_at, bindparam("b_now", type_=c.updated_at.type)),
                    ),
                    else_=None,
                ),
                updated_at=bindparam("b_now", type_=c.updated_at.type),
                last_import_id=import_id,
            )
        )
        self.connection.execute(
            statement,
            [
                {
                    **{
                        f"b_{name}": value for name, value in zip(_STAGED_COLUMNS, row, strict=True)
                    },
                    "b_now": now,
                }
                for row in rows
            ],
        )

    def keep(self, keys: list[str], import_id: str) -> None:
        if keys:
            self.connection.execute(
                update(_MEMBER)
                .where(_MEMBER.c.member_key.in_(keys))
                .values(last_import_id=import_id)
            )

    def retire_absent(self, source: str, import_id: str, now: datetime) -> int:
        """Members of ``source`` this full import did not list become ineligible."""
        c = _MEMBER.c
        outcome = self.connection.execute(
            update(_MEMBER)
            .where(c.source == source, c.last_import_id != import_id, c.eligible.is_(True))
            .values(eligible=False, updated_at=now)
        )
        return int(outcome.rowcount)


class _PostgresWriter(_Writer):
    """PostgreSQL: COPY new members straight in, and updates through a staging table."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        self.raw: Any = connection.connection.driver_connection
        self.staging = False

    def lookup(self, keys: list[str]) -> dict[str, tuple[str, str]]:
        if not keys:
            return {}
        with self.raw.cursor() as cursor:
            cursor.execute(
                "SELECT member_key, id, last_import_id FROM roster_member "
                "WHERE member_key = ANY(%s)",
                (keys,),
            )
            return {key: (row_id, last) for key, row_id, last in cursor}

    def _copy(self, table: str, names: Iterable[str], rows: list[tuple[Any, ...]]) -> None:
        with (
            self.raw.cursor() as cursor,
            cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self._copy("roster_member", _MEMBER_COLUMNS, rows)

    def update(self, rows: list[tuple[Any, ...]], import_id: str, now: datetime) -> None:
        if not rows:
            return
        with self.raw.cursor() as cursor:
            if not self.staging:
                cursor.execute(
                    "CREATE TEMPORARY TABLE roster_stage (id varchar(40), "
                    "identity_hash varchar(64), dob_hash varchar(64), "
                    "last_name_hash varchar(64), zip_hash varchar(64), "
                    "details_encrypted bytea, terminated boolean) ON COMMIT DROP"
                )
                self.staging = True
            self._copy("roster_stage", _STAGED_COLUMNS, rows)
            cursor.execute(
                "UPDATE roster_member m SET identity_hash = s.identity_hash, "
                "dob_hash = s.dob_hash, last_name_hash = s.last_name_hash, "
                "zip_hash = s.zip_hash, details_encrypted = s.details_encrypted, "
                "eligible = NOT s.terminated, "
                "terminated_at = CASE WHEN s.terminated "
                "THEN coalesce(m.terminated_at, %(now)s) END, "
                "updated_at = %(now)s, last_import_id = %(import_id)s "
                "FROM roster_stage s WHERE m.id = s.id",
                {"now": now, "import_id": import_id},
            )
            cursor.execute("TRUNCATE roster_stage")


def stats(rt: Runtime, source: str) -> SourceStats | None:
    """Counts for one source (None if it was never imported); no values."""
    check_source(source)
    member = RosterMember
    with rt.sessions() as db:
        last = db.scalars(
            select(RosterImport)
            .where(RosterImport.source == source)
            .order_by(RosterImport.started_at.desc())
            .limit(1)
        ).first()
        if last is None:
            return None
        members, eligible, terminated = db.execute(
            select(
                func.count(),
                func.count().filter(member.eligible.is_(True)),
                func.count().filter(member.terminated_at.is_not(None)),
            ).where(member.source == source)
        ).one()
        linked = db.scalar(
            select(func.count())
            .select_from(PatientLink)
            .join(member, member.patient_id == PatientLink.patient_id)
            .where(member.source == source)
        )
    return SourceStats(members, eligible, terminated, int(linked or 0), last)
