"""The hash-chained audit log: appends, tamper detection, concurrent writers."""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text
from starlette.testclient import TestClient

from carebridge import audit
from carebridge.app import create_app
from carebridge.audit import AuditRecord, Outcome
from carebridge.cli import main
from carebridge.db import insert_together, make_engine, make_sessionmaker, transaction
from carebridge.runtime import Runtime
from carebridge.settings import Settings


def _append(runtime: Runtime, count: int) -> None:
    for n in range(count):
        with transaction(runtime.sessions) as session:
            audit.append(
                session,
                actor=f"account:a{n}",
                action="account.sign_in",
                outcome=Outcome.ALLOWED if n % 2 else Outcome.DENIED,
                target=f"patient:p{n}",
                request_id=f"req{n:08d}",
            )


def _verify(runtime: Runtime) -> audit.Verification:
    """The chain as an operator checks it: pending records linked first, as the CLI does."""
    audit.chain_all(runtime.sessions)
    with runtime.sessions() as session:
        return audit.verify(session)


def test_an_empty_log_verifies(runtime: Runtime) -> None:
    result = _verify(runtime)
    assert result.intact
    assert (result.records, result.head) == (0, audit.GENESIS)


def test_appends_form_a_linear_chain(runtime: Runtime) -> None:
    _append(runtime, 5)
    audit.chain_all(runtime.sessions)
    with runtime.sessions() as session:
        records = session.scalars(audit.select(AuditRecord).order_by(AuditRecord.link)).all()
    assert [r.link for r in records] == [1, 2, 3, 4, 5]
    assert [r.actor for r in records] == [f"account:a{n}" for n in range(5)]
    assert records[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    result = _verify(runtime)
    assert result.intact and result.records == 5 and result.head == records[-1].hash


def test_a_record_rolls_back_with_its_transaction(runtime: Runtime) -> None:
    def failing_change() -> None:
        with transaction(runtime.sessions) as session:
            audit.append(session, actor="system", action="roster.import", outcome=Outcome.ALLOWED)
            raise RuntimeError("the change it describes failed")

    with pytest.raises(RuntimeError):
        failing_change()
    _append(runtime, 1)
    assert _verify(runtime).records == 1


def test_the_hash_is_of_the_documented_canonical_form() -> None:
    # Chains already written verify only while these bytes stay the same.
    content = '[7,"2026-01-02T03:04:05.000000Z","account:a","x",null,"allowed","r\\u00e9"]'
    expected = hashlib.sha256(("0" * 64 + content).encode("ascii")).hexdigest()
    fields = {"seq": 7, "actor": "account:a", "action": "x", "target": None}
    for at in (
        datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 1, 2, 3, 4, 5),  # SQLite hands UTC back naive
    ):
        digest = audit.record_hash("0" * 64, at=at, outcome="allowed", request_id="ré", **fields)  # type: ignore[arg-type]
        assert digest == expected


def test_hash_covers_every_field() -> None:
    base = {
        "seq": 1,
        "at": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "actor": "account:a",
        "action": "x",
        "target": "patient:p",
        "outcome": "allowed",
        "request_id": "r",
    }
    reference = audit.record_hash(audit.GENESIS, **base)  # type: ignore[arg-type]
    changed = {
        "seq": 2,
        "at": datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=UTC),
        "actor": "account:b",
        "action": "y",
        "target": None,
        "outcome": "denied",
        "request_id": None,
    }
    for field, value in changed.items():
        assert audit.record_hash(audit.GENESIS, **{**base, field: value}) != reference, field  # type: ignore[arg-type]
    assert audit.record_hash("1" * 64, **base) != reference  # type: ignore[arg-type]


def _execute(runtime: Runtime, sql: str, **params: object) -> None:
    with runtime.engine.begin() as connection:
        connection.execute(text(sql), params)


def test_edited_outcome_is_detected(runtime: Runtime) -> None:
    _append(runtime, 5)
    audit.chain_all(runtime.sessions)
    _execute(runtime, "UPDATE audit_log SET outcome = 'allowed' WHERE link = 3")
    result = _verify(runtime)
    assert result.broken_at == 3
    assert "modified" in result.reason


def test_deleted_record_is_detected(runtime: Runtime) -> None:
    _append(runtime, 5)
    audit.chain_all(runtime.sessions)
    _execute(runtime, "DELETE FROM audit_log WHERE link = 2")
    result = _verify(runtime)
    assert result.broken_at == 2
    assert "missing" in result.reason


def test_deleted_first_record_is_detected(runtime: Runtime) -> None:
    _append(runtime, 3)
    audit.chain_all(runtime.sessions)
    _execute(runtime, "DELETE FROM audit_log WHERE link = 1")
    assert _verify(runtime).broken_at == 1


def test_record_rewritten_with_its_own_hash_is_detected_at_the_next(runtime: Runtime) -> None:
    # A forger who recomputes the edited record's hash still breaks the next link.
    _append(runtime, 4)
    audit.chain_all(runtime.sessions)
    with runtime.sessions() as session:
        record = session.scalars(audit.select(AuditRecord).where(AuditRecord.link == 2)).one()
        assert record.prev_hash is not None
        forged = audit.record_hash(
            record.prev_hash,
            seq=record.seq,
            at=record.at,
            actor="account:someone-else",
            action=record.action,
            target=record.target,
            outcome=record.outcome,
            request_id=record.request_id,
        )
    _execute(
        runtime,
        "UPDATE audit_log SET actor = 'account:someone-else', hash = :h WHERE link = 2",
        h=forged,
    )
    result = _verify(runtime)
    assert result.broken_at == 3
    assert "link" in result.reason


def test_record_inserted_out_of_order_is_detected(runtime: Runtime) -> None:
    _append(runtime, 3)
    audit.chain_all(runtime.sessions)
    _execute(runtime, "UPDATE audit_log SET link = 10 WHERE link = 3")
    _append(runtime, 1)  # the chain continues after the highest link
    audit.chain_all(runtime.sessions)
    _execute(runtime, "UPDATE audit_log SET link = 3 WHERE link = 11")
    result = _verify(runtime)
    assert not result.intact
    assert result.broken_at == 3


def test_cli_verify_reports_intact_and_broken(
    runtime: Runtime, cli_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(runtime, 4)
    assert main(["audit", "verify"]) == 0  # links pending records first
    assert "intact: 4 records" in capsys.readouterr().out
    _execute(runtime, "UPDATE audit_log SET outcome = 'failed' WHERE link = 2")
    assert main(["audit", "verify"]) == 1
    assert "broken at record 2" in capsys.readouterr().out


def _writer(url: str, worker: int, count: int) -> None:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    for n in range(count):
        with transaction(sessions) as session:
            audit.append(
                session, actor=f"system:w{worker}", action=f"test.{n}", outcome=Outcome.ALLOWED
            )
    engine.dispose()


def test_concurrent_writers_keep_one_linear_chain(runtime: Runtime, database_url: str) -> None:
    writers, each = 4, 40
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_writer, args=(database_url, w, each)) for w in range(writers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=90)
        assert process.exitcode == 0
    result = _verify(runtime)
    assert result.intact, result.reason
    assert result.records == writers * each


def test_records_wait_unchained_on_postgresql_until_the_chainer_links_them(
    runtime: Runtime,
) -> None:
    _append(runtime, 3)
    with runtime.sessions() as session:
        before = audit.verify(session)
    if runtime.settings.uses_sqlite:
        # SQLite chains inline: its transactions already hold the write lock.
        assert (before.records, before.pending) == (3, 0)
        return
    assert (before.records, before.pending) == (0, 3)
    assert audit.chain_all(runtime.sessions) == 3
    with runtime.sessions() as session:
        after = audit.verify(session)
    assert after.intact and (after.records, after.pending) == (3, 0)
    assert audit.chain_all(runtime.sessions) == 0  # nothing left to link


@pytest.fixture
def pg_runtime(tmp_path: Path, postgres_database: str) -> Iterator[Runtime]:
    """PostgreSQL only: SQLite chains inline and has no separate chainer."""
    runtime = Runtime.build(Settings(data_dir=tmp_path / "data", database_url=postgres_database))
    yield runtime
    runtime.close()


def test_a_busy_chainer_makes_another_return_at_once(pg_runtime: Runtime) -> None:
    runtime = pg_runtime
    _append(runtime, 2)
    with transaction(runtime.sessions) as first:
        assert audit.chain_pending(first) == 2
        # The first chainer holds the lock until it commits: a second one does not wait.
        with transaction(runtime.sessions) as second:
            assert audit.chain_pending(second) == 0
    assert _verify(runtime).records == 2


def test_a_record_committed_late_is_chained_after_later_ones(pg_runtime: Runtime) -> None:
    """Records are chained in the order they become visible: a transaction that took its
    number early but committed after a chaining run is linked in the next run."""
    runtime = pg_runtime
    with transaction(runtime.sessions) as slow:
        audit.append(slow, actor="system:slow", action="test", outcome=Outcome.ALLOWED)
        _append(runtime, 2)  # committed while the slow one is still open
        assert audit.chain_all(runtime.sessions) == 2
    assert audit.chain_all(runtime.sessions) == 1
    with runtime.sessions() as session:
        actors = list(session.scalars(audit.select(AuditRecord.actor).order_by(AuditRecord.link)))
    assert actors == ["account:a0", "account:a1", "system:slow"]
    assert _verify(runtime).intact


def _actions(runtime: Runtime) -> list[str]:
    with runtime.sessions() as session:
        return list(session.scalars(audit.select(AuditRecord.action).order_by(AuditRecord.seq)))


def test_a_staged_record_is_written_at_commit_and_dropped_on_rollback(runtime: Runtime) -> None:
    with transaction(runtime.sessions) as session:
        audit.stage(session, actor="system", action="kept", outcome=Outcome.ALLOWED)

    def failing_change() -> None:
        with transaction(runtime.sessions) as session:
            audit.stage(session, actor="system", action="dropped", outcome=Outcome.ALLOWED)
            raise RuntimeError("the change it describes failed")

    with pytest.raises(RuntimeError):
        failing_change()
    assert _actions(runtime) == ["kept"]
    assert _verify(runtime).intact


def test_a_staged_record_outlives_a_savepoint_rolled_back_in_its_transaction(
    runtime: Runtime,
) -> None:
    with transaction(runtime.sessions) as session:
        audit.stage(session, actor="system", action="kept", outcome=Outcome.ALLOWED)
        with pytest.raises(RuntimeError), session.begin_nested():
            raise RuntimeError("a part of the work that is retried or skipped")
    assert _actions(runtime) == ["kept"]


def test_a_staged_record_taken_by_a_hot_path_is_written_once(runtime: Runtime) -> None:
    with transaction(runtime.sessions) as session:
        audit.stage(session, actor="system", action="taken", outcome=Outcome.ALLOWED)
        taken = audit.take_staged(session)
        if runtime.settings.uses_sqlite:
            assert taken == []  # SQLite wrote (and chained) it at once
        else:
            assert [values["action"] for _, values in taken] == ["taken"]
            insert_together(session, taken)
    assert _actions(runtime) == ["taken"]
    result = _verify(runtime)
    assert result.intact and result.records == 1


def test_the_web_app_links_new_records_in_the_background(
    tmp_path: Path, postgres_database: str
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", database_url=postgres_database, audit_chain_seconds=0.1
    )
    runtime = Runtime.build(settings)
    with TestClient(create_app(runtime)):  # runs the app's lifespan: its chainer
        _append(runtime, 3)
        deadline = time.monotonic() + 10
        while True:
            with runtime.sessions() as session:
                result = audit.verify(session)
            if result.records == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert result.intact and (result.records, result.pending) == (3, 0)
