"""A care team cannot open a thread with a patient who is no longer eligible (issue 17):
terminated on the roster, the patient gets no new conversations; the refusal is audited."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import func, select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord, Outcome
from carebridge.wiring import CareTeamFollowers
from identity.patients import Eligibility, eligibility
from identity.roster import importer
from messaging.models import Thread
from sms.models import Notification
from tests.identity.roster_helpers import HEADER, PEOPLE
from tests.messaging.conftest import World, start_thread


def terminate(world: World, tmp_path: Path, name: str) -> None:
    """The roster source's next (partial) file marks the person terminated."""
    path = tmp_path / "terminations.csv"
    path.write_text(f"{HEADER}\n{','.join([*PEOPLE[name], 'terminated'])}\n", encoding="utf-8")
    importer.import_roster(
        world.runtime, path, source="acme", partial=True, followers=CareTeamFollowers()
    )


def open_thread(client: TestClient, world: World, patient_id: str) -> httpx.Response:
    return client.post(
        "/api/v1/messaging/threads",
        json={"patient_id": patient_id, "subject": "Follow-up", "body": "Please call us."},
        headers=world.app(),
    )


def test_a_care_team_cannot_open_a_thread_with_a_terminated_member(
    client: TestClient, world: World, tmp_path: Path
) -> None:
    earlier = start_thread(client, world, "zeb")
    terminate(world, tmp_path, "zeb")
    with world.runtime.sessions() as db:
        threads_before = db.scalar(select(func.count()).select_from(Thread))
        notices_before = db.scalar(select(func.count()).select_from(Notification))

    response = open_thread(client, world, world.patients["zeb"])

    assert response.status_code == 409
    problem = response.json()
    assert "no longer eligible" in problem["detail"]
    assert world.patients["zeb"] not in str(problem)
    with world.runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Thread)) == threads_before
        assert db.scalar(select(func.count()).select_from(Notification)) == notices_before
        [record] = db.scalars(
            select(AuditRecord)
            .where(AuditRecord.action == "messaging.thread.create")
            .order_by(AuditRecord.seq.desc())
            .limit(1)
        ).all()
    assert record.outcome == Outcome.DENIED
    # The conversation already under way is still there for both.
    assert client.get(f"/api/v1/messaging/threads/{earlier}", headers=world.app()).is_success


def test_an_eligible_member_still_gets_threads_and_an_unknown_id_is_422(
    client: TestClient, world: World, tmp_path: Path
) -> None:
    terminate(world, tmp_path, "zeb")
    assert open_thread(client, world, world.patients["otto"]).status_code == 201
    unknown = open_thread(client, world, "pt_" + "x" * 22)
    assert unknown.status_code == 422


def test_eligibility_answers_for_a_patient_id(world: World, tmp_path: Path) -> None:
    terminate(world, tmp_path, "zeb")
    with world.runtime.sessions() as db:
        assert eligibility(db, world.patients["zeb"]) is Eligibility.INELIGIBLE
        assert eligibility(db, world.patients["otto"]) is Eligibility.ELIGIBLE
        assert eligibility(db, "pt_unknown") is Eligibility.UNKNOWN
