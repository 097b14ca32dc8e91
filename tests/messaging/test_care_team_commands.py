"""``carebridge messaging care-teams``: patient-started threads and care relationships
(carebridge/cli/care_relationships.py), on the world of the messaging tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from messaging.models import CareRelationship, CareTeam

from .conftest import World
from .test_retention_and_export import run


def test_configuring_a_team_for_patients_who_write_first(
    capsys: pytest.CaptureFixture[str], cli_env: Path, world: World
) -> None:
    teams = ("messaging", "care-teams")
    status, out, _ = run(capsys, *teams, "add-topic", world.team, "Prescription refill")
    topic = out.strip()
    assert status == 0 and topic.startswith("top_")
    status, _, _ = run(
        capsys,
        *teams,
        "configure",
        world.team,
        "--patients-may-start",
        "--auto-reply",
        "If this is an emergency, call 911.",
        "--escalate-after",
        "4h",
    )
    assert status == 0
    status, out, _ = run(capsys, *teams, "show", world.team)
    assert "patients may start threads: yes" in out and "call 911" in out
    assert "4:00:00" in out and f"topic {topic}  Prescription refill" in out
    status, _, err = run(capsys, *teams, "configure", world.team, "--escalate-after", "10x")
    assert status == 2 and "escalate-after" in err
    status, _, err = run(capsys, *teams, "retire-topic", world.other_team, topic)
    assert status == 1 and "no topic" in err
    assert run(capsys, *teams, "retire-topic", world.team, topic)[0] == 0
    with world.runtime.sessions() as db:
        team = db.get(CareTeam, world.team)
        assert team is not None and team.escalate_after_seconds == 4 * 3600


def test_relationship_commands_keep_the_history(
    capsys: pytest.CaptureFixture[str], cli_env: Path, world: World
) -> None:
    teams = ("messaging", "care-teams")
    zeb = world.patients["zeb"]
    assert run(capsys, *teams, "add-patient", world.team, zeb)[1].strip() == (
        "care relationship started"
    )
    status, _, err = run(capsys, *teams, "add-patient", world.team, "p_nobody")
    assert status == 1 and "No such patient" in err
    status, _, _ = run(capsys, *teams, "end-patient", world.team, zeb, "--reason", "moved")
    assert status == 0
    status, _, err = run(capsys, *teams, "end-patient", world.team, zeb, "--reason", "again")
    assert status == 1 and "no active care relationship" in err
    status, out, _ = run(capsys, *teams, "relationships", world.team)
    assert "operator" in out and "ended" in out and "(moved)" in out
    assert run(capsys, *teams, "set-roster-source", world.team, "acme")[0] == 0
    assert run(capsys, *teams, "sync-roster", "acme")[0] == 0
    with world.runtime.sessions() as db:
        rows = db.scalars(
            select(CareRelationship).where(CareRelationship.care_team_id == world.team)
        ).all()
    assert sorted((r.source, r.ended_at is None) for r in rows) == [
        ("operator", False),
        ("roster", True),
        ("roster", True),
        ("roster", True),
    ]


def test_routing_topics_to_a_pool_from_the_command_line(
    capsys: pytest.CaptureFixture[str], cli_env: Path, world: World
) -> None:
    teams = ("messaging", "care-teams")
    status, out, _ = run(capsys, "staff", "add-pool", world.team, "billing", "--role", "front desk")
    pool = out.strip()
    assert status == 0 and pool.startswith("pool_")
    status, out, _ = run(
        capsys, *teams, "add-topic", world.team, "Billing question", "--pool", pool
    )
    topic = out.strip()
    assert status == 0
    status, out, _ = run(capsys, *teams, "show", world.team)
    assert f"topic {topic}  Billing question  (pool: {pool})" in out
    assert run(capsys, *teams, "route-topic", world.team, topic)[0] == 0
    assert "(pool: team-wide)" in run(capsys, *teams, "show", world.team)[1]
    other = run(capsys, "staff", "add-pool", world.other_team, "other")[1].strip()
    status, _, err = run(capsys, *teams, "route-topic", world.team, topic, "--pool", other)
    assert status == 1 and "no pool" in err
    status, _, err = run(capsys, *teams, "add-topic", world.team, "X", "--pool", other)
    assert status == 1 and "no pool" in err
