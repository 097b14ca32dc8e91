"""Staff operations on patient IDs: each needs a reason, is audited with IDs only, and
shows no DOB or SSN digits (both backends)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from carebridge.cli import main
from carebridge.runtime import Runtime
from identity.models import Account, ActivationCode, StaffAction
from identity.roster import staff

from . import factories
from .roster_helpers import PEOPLE, audit_records, import_roster, link, links

COMMANDS = ("activation-code", "unlink", "reverify", "lookup")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def patients(runtime: Runtime, tmp_path: Path) -> dict[str, str]:
    return import_roster(runtime, tmp_path)


def staff_actions(runtime: Runtime) -> list[tuple[str, str | None, str]]:
    with runtime.sessions() as db:
        rows = db.scalars(select(StaffAction).order_by(StaffAction.at)).all()
        return [(row.action, row.patient_id, row.reason) for row in rows]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_staff_command_requires_a_reason(
    capsys: pytest.CaptureFixture[str],
    cli_env: Path,
    runtime: Runtime,
    patients: dict[str, str],
    command: str,
) -> None:
    link(runtime, factories.account(runtime), patients["zeb"])
    before = len(audit_records(runtime))
    status, out, err = run(capsys, "roster", command, patients["zeb"])
    assert status == 2
    assert "--reason" in err
    assert out == ""
    status, _, err = run(capsys, "roster", command, patients["zeb"], "--reason", "   ")
    assert status != 0
    assert "--reason" in err
    assert len(audit_records(runtime)) == before
    assert staff_actions(runtime) == []


def test_unlink_removes_the_link_and_keeps_the_account(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, patients: dict[str, str]
) -> None:
    account_id = factories.account(runtime)
    link(runtime, account_id, patients["zeb"])
    status, out, err = run(
        capsys, "roster", "unlink", patients["zeb"], "--reason", "linked to the wrong person"
    )
    assert (status, err) == (0, "")
    assert account_id in out
    assert links(runtime) == {}
    with runtime.sessions() as db:
        assert db.get(Account, account_id) is not None
    assert staff_actions(runtime) == [
        ("roster.unlink", patients["zeb"], "linked to the wrong person")
    ]
    last = audit_records(runtime)[-1]
    assert (last.actor, last.action, last.target, last.outcome) == (
        "operator",
        "roster.unlink",
        patients["zeb"],
        "allowed",
    )
    status, _, err = run(capsys, "roster", "unlink", patients["zeb"], "--reason", "again")
    assert status != 0
    assert "not linked" in err


def test_reverify_unlinks_and_ends_unused_activation_codes(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, patients: dict[str, str]
) -> None:
    staff.issue_code(runtime, patients["otto"], reason="new patient")
    account_id = factories.account(runtime)
    link(runtime, account_id, patients["otto"])
    status, out, _ = run(capsys, "roster", "reverify", patients["otto"], "--reason", "audit")
    assert status == 0
    assert "must verify again" in out
    assert links(runtime) == {}
    with runtime.sessions() as db:
        code = db.scalars(select(ActivationCode)).one()
    expires = code.expires_at if code.expires_at.tzinfo else code.expires_at.replace(tzinfo=UTC)
    assert expires <= datetime.now(UTC)
    assert staff_actions(runtime) == [("roster.reverify", patients["otto"], "audit")]
    assert audit_records(runtime)[-1].action == "roster.reverify"


def test_lookup_prints_the_roster_details_and_never_the_dob_or_ssn(
    capsys: pytest.CaptureFixture[str], cli_env: Path, runtime: Runtime, patients: dict[str, str]
) -> None:
    link(runtime, factories.account(runtime), patients["zeb"])
    status, out, err = run(
        capsys, "roster", "lookup", patients["zeb"], "--reason", "patient called"
    )
    assert (status, err) == (0, "")
    first, last, dob, ssn4, zip_code, group, member_id = PEOPLE["zeb"]
    for shown in (first, last, zip_code, group, member_id, "eligible:    yes", "linked:      yes"):
        assert shown in out
    for hidden in (dob, ssn4, "1961", "03/14"):
        assert hidden not in out
    status, out, _ = run(capsys, "roster", "lookup", patients["pip"], "--reason", "check")
    assert "linked:      no" in out
    assert staff_actions(runtime) == [
        ("roster.lookup", patients["zeb"], "patient called"),
        ("roster.lookup", patients["pip"], "check"),
    ]
    looked = [r for r in audit_records(runtime) if r.action == "roster.lookup"]
    assert [r.target for r in looked] == [patients["zeb"], patients["pip"]]
    text = "\n".join(repr((r.actor, r.action, r.target)) for r in audit_records(runtime))
    assert first not in text and last not in text and "patient called" not in text


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_patient_id_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str],
    cli_env: Path,
    runtime: Runtime,
    patients: dict[str, str],
    command: str,
) -> None:
    status, out, err = run(
        capsys, "roster", command, "pt_AAAAAAAAAAAAAAAAAAAAAA", "--reason", "typo check"
    )
    assert status != 0
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "pt_AAAAAAAAAAAAAAAAAAAAAA" in err
    assert staff_actions(runtime) == []
