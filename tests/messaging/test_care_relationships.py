"""Care relationships: who starts and ends them, and how they gate both directions."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.wiring import CareTeamFollowers, CareTeamsFollowRoster
from identity.roster import importer
from messaging import relationships
from messaging.interfaces import operator_end, operator_start, set_roster_source
from messaging.models import CareRelationship, Thread
from tests.identity.roster_helpers import HEADER, PEOPLE
from tests.identity.test_admin_api import csv_body, ops, upload

from .conftest import World, start_thread

NO_ACTIVE = relationships.NO_ACTIVE


def _rows(world: World, patient: str, team: str) -> list[CareRelationship]:
    with world.runtime.sessions() as db:
        query = (
            select(CareRelationship)
            .where(
                CareRelationship.patient_id == world.patients[patient],
                CareRelationship.care_team_id == team,
            )
            .order_by(CareRelationship.created_at)
        )
        return list(db.scalars(query))


def _audited(world: World, action: str) -> list[tuple[str, str | None]]:
    with world.runtime.sessions() as db:
        query = select(AuditRecord.actor, AuditRecord.target).where(AuditRecord.action == action)
        return [(actor, target) for actor, target in db.execute(query)]


def _end(client: TestClient, world: World, patient: str = "zeb") -> None:
    ended = client.post(
        "/api/v1/messaging/care-relationships/end",
        json={"patient_id": world.patients[patient], "reason": "moved to another clinic"},
        headers=world.staff(),
    )
    assert ended.status_code == 200, ended.text
    assert ended.json()["end_reason"] == "moved to another clinic"


def test_a_team_opening_a_first_thread_starts_the_relationship(
    client: TestClient, world: World
) -> None:
    start_thread(client, world)
    (row,) = _rows(world, "zeb", world.team)
    assert row.source == "thread" and row.ended_at is None
    assert row.created_by == "app:provider-app"
    target = f"care_relationship:{world.team}:{world.patients['zeb']}"
    assert ("app:provider-app", target) in _audited(world, "messaging.care_relationship.start")
    # A second thread reuses it.
    start_thread(client, world, subject="Another")
    assert len(_rows(world, "zeb", world.team)) == 1


def test_ending_keeps_the_history_and_a_new_start_is_a_new_row(
    client: TestClient, world: World
) -> None:
    start_thread(client, world)
    _end(client, world)
    started = client.post(
        "/api/v1/messaging/care-relationships",
        json={"patient_id": world.patients["zeb"]},
        headers=world.staff(),
    )
    assert started.status_code == 201, started.text
    assert started.json()["source"] == "staff"
    again = client.post(
        "/api/v1/messaging/care-relationships",
        json={"patient_id": world.patients["zeb"]},
        headers=world.staff(),
    )
    assert again.status_code == 200
    first, second = _rows(world, "zeb", world.team)
    assert first.ended_at is not None and first.end_reason == "moved to another clinic"
    assert second.ended_at is None
    listed = client.get(
        "/api/v1/messaging/care-relationships",
        params={"patient_id": world.patients["zeb"]},
        headers=world.staff(),
    )
    assert [r["ended_at"] is None for r in listed.json()["relationships"]] == [True, False]
    staff = f"account:{world.staff_account}"
    target = f"care_relationship:{world.team}:{world.patients['zeb']}"
    assert _audited(world, "messaging.care_relationship.end").count((staff, target)) == 1


def test_a_team_writing_to_a_patient_whose_relationship_ended_is_refused(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)
    _end(client, world)
    posted = client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "Still there?"},
        headers=world.app(),
    )
    assert posted.status_code == 403
    assert posted.json()["detail"] == NO_ACTIVE
    # The thread stays readable, and nothing was written.
    read = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.app())
    assert read.status_code == 200 and len(read.json()["messages"]) == 1


def test_a_patient_writing_to_a_team_after_the_relationship_ended_is_refused(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)
    _end(client, world)
    posted = client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "Hello?"},
        headers=world.patient("zeb"),
    )
    assert posted.status_code == 403
    assert posted.json()["detail"] == NO_ACTIVE


def test_reopening_a_thread_after_the_relationship_ended_is_refused(
    client: TestClient, world: World
) -> None:
    start_thread(client, world)
    _end(client, world)
    refused = client.post(
        "/api/v1/messaging/threads",
        json={"patient_id": world.patients["zeb"], "subject": "Hi", "body": "Back again"},
        headers=world.app(),
    )
    assert refused.status_code == 403
    assert refused.json()["detail"] == NO_ACTIVE
    with world.runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Thread)) == 1
    # Staff re-create it explicitly; then the team writes again.
    operator_start(world.runtime, world.team, world.patients["zeb"], actor="operator")
    start_thread(client, world, subject="Back")


def test_another_teams_patient_cannot_be_ended_by_this_team(
    client: TestClient, world: World
) -> None:
    start_thread(client, world)
    ended = client.post(
        "/api/v1/messaging/care-relationships/end",
        json={"patient_id": world.patients["zeb"], "reason": "x"},
        headers=world.app("other-team-app"),
    )
    assert ended.status_code == 404
    assert _rows(world, "zeb", world.team)[0].ended_at is None


def test_a_patients_token_cannot_manage_relationships(client: TestClient, world: World) -> None:
    refused = client.post(
        "/api/v1/messaging/care-relationships",
        json={"patient_id": world.patients["zeb"]},
        headers=world.patient("zeb"),
    )
    assert refused.status_code == 403
    assert not _rows(world, "zeb", world.team)


def test_the_operator_ends_a_relationship_with_a_reason(client: TestClient, world: World) -> None:
    operator_start(world.runtime, world.team, world.patients["otto"], actor="operator")
    operator_end(world.runtime, world.team, world.patients["otto"], reason="left", actor="operator")
    (row,) = _rows(world, "otto", world.team)
    assert (row.source, row.ended_by, row.end_reason) == ("operator", "operator", "left")


def test_a_roster_source_feeds_a_team_and_rows_removed_end_it(world: World, tmp_path: Path) -> None:
    set_roster_source(world.runtime, world.team, "acme", actor="operator")
    CareTeamsFollowRoster(world.runtime).roster_imported(source="acme")
    for name in ("zeb", "otto", "pip"):
        (row,) = _rows(world, name, world.team)
        assert row.source == "roster" and row.ended_at is None
    assert not _rows(world, "zeb", world.other_team)
    # A full re-import without otto: otto's roster relationship ends, the others stay.
    path = tmp_path / "again.csv"
    kept = [",".join([*PEOPLE[name], ""]) for name in ("zeb", "pip")]
    path.write_text("\n".join([HEADER, *kept]) + "\n", encoding="utf-8")
    importer.import_roster(world.runtime, path, source="acme", followers=CareTeamFollowers())
    CareTeamsFollowRoster(world.runtime).roster_imported(source="acme")
    (otto,) = _rows(world, "otto", world.team)
    assert otto.ended_at is not None and otto.ended_by == "roster:acme"
    assert _rows(world, "zeb", world.team)[0].ended_at is None


def test_an_admin_roster_upload_ends_the_relationships_of_rows_removed(
    client: TestClient, world: World
) -> None:
    set_roster_source(world.runtime, world.team, "acme", actor="operator")
    kept = [",".join([*PEOPLE[name], ""]) for name in ("zeb", "pip")]
    answer = upload(client, ops(world.runtime), csv_body(*kept))
    assert answer.status_code == 200, answer.text
    assert _rows(world, "zeb", world.team)[0].ended_at is None
    # otto left with this full upload: never started (not eligible at the sync).
    assert not _rows(world, "otto", world.team)
    everyone = [",".join([*row, ""]) for row in PEOPLE.values()]
    assert upload(client, ops(world.runtime), csv_body(*everyone)).status_code == 200
    assert _rows(world, "otto", world.team)[0].ended_at is None
    assert upload(client, ops(world.runtime), csv_body(*kept)).status_code == 200
    (otto,) = _rows(world, "otto", world.team)
    assert otto.ended_at is not None and otto.end_reason == "no longer on roster acme"
