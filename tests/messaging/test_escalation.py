"""Escalation reaches the team admins: a patient-started thread unanswered past the
team's escalate_after is flagged, listed first for the care team, and every team admin
is e-mailed a notice without PHI (no patient, subject or topic). Both databases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

from carebridge.db import transaction
from carebridge.utc import utcnow
from messaging import care_teams
from messaging.escalation import escalate_due
from messaging.interfaces import add_topic, configure, operator_start
from messaging.models import Thread
from tests.identity.account_changes import emails_to, patient

from .conftest import World, start_thread

THREADS = "/api/v1/messaging/threads"
TOPIC = "Mental health"
SUBJECT = "Sleepless since the new dose"


@pytest.fixture
def topic(world: World) -> str:
    configure(
        world.runtime,
        world.team,
        actor="t",
        patients_may_start=True,
        escalate_after=timedelta(hours=4),
    )
    operator_start(world.runtime, world.team, world.patients["zeb"], actor="t")
    return add_topic(world.runtime, world.team, TOPIC, actor="t")


def _write(client: TestClient, world: World, topic: str) -> str:
    response = client.post(
        THREADS,
        json={
            "care_team_id": world.team,
            "topic_id": topic,
            "subject": SUBJECT,
            "body": "Help",
        },
        headers=world.patient("zeb"),
    )
    assert response.status_code == 201, response.text
    thread_id: str = response.json()["thread"]["id"]
    return thread_id


def _age(world: World, thread_id: str, hours: int) -> None:
    with transaction(world.runtime.sessions) as db:
        db.execute(
            update(Thread)
            .where(Thread.id == thread_id)
            .values(created_at=utcnow() - timedelta(hours=hours))
        )


def test_an_escalation_emails_every_team_admin_without_phi(
    client: TestClient, world: World, topic: str
) -> None:
    admin = patient(world.runtime, login="admin@clinic.example")
    care_teams.add_staff(world.runtime, world.team, admin.account_id, actor="t", role="team admin")
    other_admin = patient(world.runtime, login="admin@other.example")
    care_teams.add_staff(
        world.runtime, world.other_team, other_admin.account_id, actor="t", role="team admin"
    )
    waiting = [_write(client, world, topic), _write(client, world, topic)]
    for thread_id in waiting:
        _age(world, thread_id, 5)
    assert sorted(escalate_due(world.runtime)) == sorted(waiting)
    # One notice for the batch, to this team's admin only; a clinician gets none.
    (notice,) = emails_to(world.runtime, admin.login)
    assert notice["subject"] == "Conversations wait for your care team's answer"
    assert "2 conversations" in notice["text"]
    for secret in (*waiting, world.patients["zeb"], SUBJECT, TOPIC, topic):
        assert secret not in notice["text"] and secret not in notice["subject"]
    assert emails_to(world.runtime, other_admin.login) == []
    # Escalated once: no second notice on the next run.
    assert escalate_due(world.runtime) == []
    assert emails_to(world.runtime, admin.login) == []


def test_overdue_threads_are_listed_first_until_the_team_answers(
    client: TestClient, world: World, topic: str
) -> None:
    waiting = _write(client, world, topic)
    _age(world, waiting, 5)
    newer = start_thread(client, world)  # the team's, more recent activity
    assert escalate_due(world.runtime) == [waiting]
    listed = client.get(THREADS, headers=world.staff()).json()["threads"]
    assert [(t["id"], t["overdue"]) for t in listed] == [(waiting, True), (newer, False)]
    # Paged one by one, the order holds across the cursor.
    first = client.get(f"{THREADS}?limit=1", headers=world.app()).json()
    second = client.get(
        f"{THREADS}?limit=1&cursor={first['next_cursor']}", headers=world.app()
    ).json()
    assert [first["threads"][0]["id"], second["threads"][0]["id"]] == [waiting, newer]
    assert second["next_cursor"] is None
    # The patient's own list keeps the plain order and no flag.
    mine = client.get(THREADS, headers=world.patient("zeb")).json()["threads"]
    assert [t["overdue"] for t in mine] == [False] * len(mine)
    # Answered: no longer overdue, back in the plain order (escalated_at stays, history).
    answered = client.post(
        f"{THREADS}/{waiting}/messages", json={"body": "Calling you now."}, headers=world.staff()
    )
    assert answered.status_code == 201
    listed = client.get(THREADS, headers=world.staff()).json()["threads"]
    assert [(t["id"], t["overdue"]) for t in listed] == [(waiting, False), (newer, False)]
    assert listed[0]["escalated_at"] is not None


def test_a_forged_cursor_is_refused(client: TestClient, world: World) -> None:
    refused = client.get(f"{THREADS}?cursor=Mnx4fHk", headers=world.app())
    assert refused.status_code == 400
