"""The hash-chained audit log: appends, tamper detection, concurrent writers."""

from __future__ import annotations

import itertools
import multiprocessing
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from carebridge import audit
from carebridge.audit import AuditRecord, Outcome
from carebridge.cli import main
from carebridge.db import make_engine, make_sessionmaker, transaction
from carebridge.runtime import Runtime


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
    with runtime.sessions() as session:
        return audit.verify(session)


def test_an_empty_log_verifies(runtime: Runtime) -> None:
    result = _verify(runtime)
    assert result.intact
    assert (result.records, result.head) == (0, audit.GENESIS)


def test_appends_form_a_linear_chain(runtime: Runtime) -> None:
    _append(runtime, 5)
    with runtime.sessions() as session:
        records = session.scalars(audit.select(AuditRecord).order_by(AuditRecord.seq)).all()
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
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
    _execute(runtime, "UPDATE audit_log SET outcome = 'allowed' WHERE seq = 3")
    result = _verify(runtime)
    assert result.broken_at == 3
    assert "modified" in result.reason


def test_deleted_record_is_detected(runtime: Runtime) -> None:
    _append(runtime, 5)
    _execute(runtime, "DELETE FROM audit_log WHERE seq = 2")
    result = _verify(runtime)
    assert result.broken_at == 2
    assert "missing" in result.reason


def test_deleted_first_record_is_detected(runtime: Runtime) -> None:
    _append(runtime, 3)
    _execute(runtime, "DELETE FROM audit_log WHERE seq = 1")
    assert _verify(runtime).broken_at == 1


def test_record_rewritten_with_its_own_hash_is_detected_at_the_next(runtime: Runtime) -> None:
    # A forger who recomputes the edited record's hash still breaks the next link.
    _append(runtime, 4)
    with runtime.sessions() as session:
        record = session.get(AuditRecord, 2)
        assert record is not None
        forged = audit.record_hash(
            record.prev_hash,
            seq=2,
            at=record.at,
            actor="account:someone-else",
            action=record.action,
            target=record.target,
            outcome=record.outcome,
            request_id=record.request_id,
        )
    _execute(
        runtime,
        "UPDATE audit_log SET actor = 'account:someone-else', hash = :h WHERE seq = 2",
        h=forged,
    )
    result = _verify(runtime)
    assert result.broken_at == 3
    assert "link" in result.reason


def test_record_inserted_out_of_order_is_detected(runtime: Runtime) -> None:
    _append(runtime, 3)
    _execute(runtime, "UPDATE audit_log SET seq = 10 WHERE seq = 3")
    _append(runtime, 1)  # the writer continues after the highest record
    _execute(runtime, "UPDATE audit_log SET seq = 3 WHERE seq = 11")
    result = _verify(runtime)
    assert not result.intact
    assert result.broken_at == 3


def test_cli_verify_reports_intact_and_broken(
    runtime: Runtime, cli_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(runtime, 4)
    assert main(["audit", "verify"]) == 0
    assert "intact: 4 records" in capsys.readouterr().out
    _execute(runtime, "UPDATE audit_log SET outcome = 'failed' WHERE seq = 2")
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
