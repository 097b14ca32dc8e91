"""``carebridge notifications``: status, retry, the opt-out list; no number ever printed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import select

from carebridge.audit import AuditRecord
from carebridge.cli import main
from carebridge.db import transaction
from carebridge.runtime import Runtime
from sms import outbox, phone
from sms.models import Notification, OptOut


def failed_notification(runtime: Runtime) -> str:
    with transaction(runtime.sessions) as db:
        ntf = outbox.enqueue(db, patient_id="pt_x", kind=outbox.NEW_MESSAGE, thread_id="t")
        db.flush()
        row = db.get(Notification, ntf)
        assert row is not None
        row.state, row.reason = "failed", "max_attempts"
    return ntf


def test_status_counts_states_and_reasons(
    runtime: Runtime, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failed_notification(runtime)
    assert main(["notifications", "status"]) == 0
    out = capsys.readouterr().out
    assert "failed       1" in out
    assert "max_attempts       1" in out


def test_retry_puts_it_back_and_audits(
    runtime: Runtime, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ntf = failed_notification(runtime)
    assert main(["notifications", "retry", ntf]) == 0
    assert f"{ntf}: failed -> pending" in capsys.readouterr().out
    with runtime.sessions() as db:
        row = db.get(Notification, ntf)
        assert row is not None and (row.state, row.attempts) == ("pending", 0)
        assert db.scalars(
            select(AuditRecord).where(AuditRecord.action == "sms.notification.retry")
        ).one()
    assert main(["notifications", "retry", ntf]) == 1  # pending is not final
    assert main(["notifications", "retry", "ntf_nope"]) == 1


def test_optouts_from_stdin_never_echo_the_number(
    runtime: Runtime,
    cli_env: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("(202) 555-0143\n"))
    assert main(["notifications", "optouts", "add"]) == 0
    with runtime.sessions() as db:
        assert db.get(OptOut, phone.number_hash(runtime.keyring, "+12025550143")) is not None
    assert main(["notifications", "optouts", "count"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("+12025550143\n"))
    assert main(["notifications", "optouts", "remove"]) == 0
    out = capsys.readouterr().out
    assert "operator   1" in out
    assert "0143" not in out
    with runtime.sessions() as db:
        assert db.scalars(select(OptOut)).first() is None
    monkeypatch.setattr("sys.stdin", io.StringIO("not a number\n"))
    assert main(["notifications", "optouts", "add"]) == 1


def test_show_lists_the_decision_and_attempts_without_the_number(
    runtime: Runtime, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sms import delivery  # noqa: PLC0415
    from sms.backends import ConsoleSender  # noqa: PLC0415
    from tests.sms.helpers import verified_number  # noqa: PLC0415

    verified_number(runtime, "pt_show", "+12025550143")
    with transaction(runtime.sessions) as db:
        ntf = outbox.enqueue(db, patient_id="pt_show", kind=outbox.NEW_MESSAGE, thread_id="t")
    delivery.drain(runtime, ConsoleSender(out=io.StringIO()))
    capsys.readouterr()
    assert main(["notifications", "show", ntf]) == 0
    out = capsys.readouterr().out
    assert "state: sent  decision: send  reason: allowed" in out
    assert " sms   accepted" in out
    assert "0143" not in out
    assert main(["notifications", "show", "ntf_nope"]) == 1
