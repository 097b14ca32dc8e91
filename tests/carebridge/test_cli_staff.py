"""``carebridge staff``: an operator configures a team's roles and pools, gives a staff
member a role and offboards them; errors are one line. Both databases."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.carebridge.test_cli import assert_one_line_error, data_dir, run

__all__ = ["data_dir"]  # the fixture, used by name


def test_an_operator_configures_roles_and_pools_and_offboards(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path,
    empty_database_url: str,
) -> None:
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", empty_database_url)
    assert run(capsys, "db", "upgrade")[0] == 0
    status, out, _ = run(capsys, "messaging", "care-teams", "create", "--name", "Northside")
    assert status == 0
    team = out.strip()
    status, out, _ = run(capsys, "staff", "roles", team)
    assert status == 0
    assert [line.split("  ")[0] for line in out.splitlines()] == [
        "clinician",
        "front desk",
        "nurse",
        "team admin",
    ]
    assert run(capsys, "staff", "rename-role", team, "front desk", "reception")[0] == 0
    status, out, _ = run(capsys, "staff", "add-pool", team, "billing", "--role", "reception")
    assert status == 0
    pool = out.strip()
    status, out, _ = run(capsys, "staff", "pools", team)
    assert out.strip() == f"{pool}  billing  reception"
    assert run(capsys, "staff", "remove-role", team, "nurse")[0] == 0
    status, _, err = run(capsys, "staff", "add-pool", team, "x", "--role", "nurse")
    assert status == 1
    assert_one_line_error(err)
    status, _, err = run(capsys, "staff", "offboard", team, "acc_nobody")
    assert status == 1
    assert_one_line_error(err)
    status, out, _ = run(capsys, "staff", "break-glass-report", team)
    assert (status, out) == (0, "")
