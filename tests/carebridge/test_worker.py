"""The background worker: job scheduling, failure isolation, the audit checkpoint."""

from __future__ import annotations

import logging
import threading

import pytest
from sqlalchemy import text

from carebridge import audit, wiring, worker
from carebridge.audit import Outcome
from carebridge.cli import main
from carebridge.db import transaction
from carebridge.runtime import Runtime


def test_audit_checkpoint_logs_the_chain_head(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    with transaction(runtime.sessions) as session:
        audit.append(session, actor="system", action="test", outcome=Outcome.ALLOWED)
    audit.chain_all(runtime.sessions)
    with runtime.sessions() as session:
        head = audit.verify(session).head
    assert head != audit.GENESIS
    with caplog.at_level(logging.INFO, logger="carebridge.worker"):
        worker.audit_checkpoint(runtime)
    (record,) = [r for r in caplog.records if r.message == "audit checkpoint"]
    assert (record.records, record.head) == (1, head)  # type: ignore[attr-defined]


def test_audit_checkpoint_reports_a_broken_chain_as_an_error(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    with transaction(runtime.sessions) as session:
        for _ in range(2):
            audit.append(session, actor="system", action="test", outcome=Outcome.ALLOWED)
    audit.chain_all(runtime.sessions)
    with runtime.engine.begin() as connection:
        connection.execute(text("UPDATE audit_log SET action = 'other' WHERE link = 1"))
    worker.audit_checkpoint(runtime)
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.broken_at == 1  # type: ignore[attr-defined]


def test_a_failing_job_does_not_stop_the_others(runtime: Runtime) -> None:
    ran: list[str] = []
    stop = threading.Event()

    def broken(_: Runtime) -> None:
        ran.append("broken")
        raise RuntimeError("boom")

    def healthy(_: Runtime) -> None:
        ran.append("healthy")
        if ran.count("healthy") == 3:
            stop.set()

    jobs = [worker.Job("broken", 0.01, broken), worker.Job("healthy", 0.01, healthy)]
    thread = threading.Thread(target=worker.run_jobs, args=(runtime, jobs, stop))
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert ran.count("healthy") == 3
    assert ran.count("broken") >= 2


def test_worker_once_runs_every_job_and_exits(cli_env: object) -> None:
    assert main(["worker", "--once"]) == 0


def test_worker_refuses_an_unmigrated_database(
    monkeypatch: pytest.MonkeyPatch,
    empty_database_url: str,
    tmp_path: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", empty_database_url)
    monkeypatch.setenv("CAREBRIDGE_DATA_DIR", str(tmp_path))
    assert main(["worker", "--once"]) == 1
    assert "carebridge db upgrade" in capsys.readouterr().err


def test_the_worker_delivers_what_identity_put_in_the_outbox(
    runtime: Runtime, cli_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    # The composition root wires identity's EmailSender and the outbox job to one table.
    sender = wiring.identity_outward(runtime).email
    with transaction(runtime.sessions) as session:
        sender.send_email(session, to="pat@example.org", subject="Welcome", text="https://x/l")
    capsys.readouterr()
    assert main(["worker", "--once"]) == 0
    assert "[email to pat@example.org] Welcome\nhttps://x/l\n" in capsys.readouterr().out
