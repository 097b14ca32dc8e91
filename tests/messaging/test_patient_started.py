"""Patients write first: to one of their care teams, on a topic it offers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.utc import utcnow
from messaging.escalation import escalate_due
from messaging.interfaces import (
    add_topic,
    configure,
    operator_end,
    operator_start,
    retire_topic,
)
from messaging.models import Message, Thread
from tests.identity import factories

from .conftest import World, patient_browser
from .test_pages import PNG

AUTO_REPLY = "We answer within one working day. If this is an emergency, call 911."


@pytest.fixture
def topic(world: World) -> str:
    """zeb belongs to the team, which takes patient threads on one topic."""
    configure(world.runtime, world.team, actor="t", patients_may_start=True, auto_reply=AUTO_REPLY)
    operator_start(world.runtime, world.team, world.patients["zeb"], actor="t")
    return add_topic(world.runtime, world.team, "Prescription refill", actor="t")


def _write(
    client: TestClient, world: World, team: str, topic: str, patient: str = "zeb"
) -> dict[str, object]:
    response = client.post(
        "/api/v1/messaging/threads",
        json={"care_team_id": team, "topic_id": topic, "subject": "Refill", "body": "Need more"},
        headers=world.patient(patient),
    )
    return {"status": response.status_code, "body": response.json()}


def _threads(world: World) -> int:
    with world.runtime.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(Thread)) or 0)


def test_a_patient_writes_first_and_gets_the_automatic_reply(
    client: TestClient, world: World, topic: str
) -> None:
    teams = client.get("/api/v1/messaging/care-teams", headers=world.patient("zeb"))
    assert teams.status_code == 200
    assert teams.json() == {
        "care_teams": [
            {
                "id": world.team,
                "name": "Northside clinic",
                "topics": [{"id": topic, "label": "Prescription refill"}],
            }
        ]
    }
    created = _write(client, world, world.team, topic)
    assert created["status"] == 201, created
    thread = created["body"]["thread"]  # type: ignore[index]
    assert (thread["started_by"], thread["topic_id"]) == ("patient", topic)
    # The team sees it in its list, with the patient's message and the automatic reply.
    listed = client.get("/api/v1/messaging/threads", headers=world.app()).json()["threads"]
    assert [(t["id"], t["started_by"]) for t in listed] == [(thread["id"], "patient")]
    read = client.get(f"/api/v1/messaging/threads/{thread['id']}", headers=world.app()).json()
    assert [(m["author_kind"], m["body"]) for m in read["messages"]] == [
        ("patient", "Need more"),
        ("app", AUTO_REPLY),
    ]
    # Sealed like every message: the stored body is not the text.
    with world.runtime.sessions() as db:
        stored = db.scalars(select(Message.body_encrypted).where(Message.seq == 2)).one()
    assert AUTO_REPLY.encode() not in stored
    # The team answers in it.
    answered = client.post(
        f"/api/v1/messaging/threads/{thread['id']}/messages",
        json={"body": "Sent to your pharmacy."},
        headers=world.staff(),
    )
    assert answered.status_code == 201


def test_a_patient_writing_to_a_team_they_have_no_relationship_with_is_refused(
    client: TestClient, world: World, topic: str
) -> None:
    configure(world.runtime, world.other_team, actor="t", patients_may_start=True)
    other_topic = add_topic(world.runtime, world.other_team, "Billing", actor="t")
    refused = _write(client, world, world.other_team, other_topic)
    assert refused["status"] == 404
    # otto has no relationship with the team zeb belongs to.
    assert _write(client, world, world.team, topic, patient="otto")["status"] == 404
    assert _threads(world) == 0
    with world.runtime.sessions() as db:
        denied = db.scalars(
            select(AuditRecord.outcome).where(AuditRecord.action == "messaging.thread.create")
        ).all()
    assert denied and all(outcome == "denied" for outcome in denied)


def test_a_patient_writing_to_a_team_that_does_not_take_patient_threads_is_refused(
    client: TestClient, world: World, topic: str
) -> None:
    configure(world.runtime, world.team, actor="t", patients_may_start=False)
    refused = _write(client, world, world.team, topic)
    assert refused["status"] == 403
    assert _threads(world) == 0
    teams = client.get("/api/v1/messaging/care-teams", headers=world.patient("zeb"))
    assert teams.json() == {"care_teams": []}


def test_a_patient_writing_with_a_topic_of_another_team_is_refused(
    client: TestClient, world: World, topic: str
) -> None:
    other_topic = add_topic(world.runtime, world.other_team, "Billing", actor="t")
    assert _write(client, world, world.team, other_topic)["status"] == 422
    assert _threads(world) == 0


def test_a_patient_starting_a_thread_after_the_relationship_ended_is_refused(
    client: TestClient, world: World, topic: str
) -> None:
    operator_end(world.runtime, world.team, world.patients["zeb"], reason="moved", actor="t")
    assert _write(client, world, world.team, topic)["status"] == 404
    assert _threads(world) == 0
    teams = client.get("/api/v1/messaging/care-teams", headers=world.patient("zeb"))
    assert teams.json() == {"care_teams": []}


def test_a_patient_writing_with_a_retired_topic_is_refused(
    client: TestClient, world: World, topic: str
) -> None:
    retire_topic(world.runtime, world.team, topic, actor="t")
    assert _write(client, world, world.team, topic)["status"] == 422
    assert _threads(world) == 0


def test_a_patient_writing_with_a_topic_that_does_not_exist_is_refused(
    client: TestClient, world: World, topic: str
) -> None:
    assert _write(client, world, world.team, "top_doesnotexist")["status"] == 422
    assert _write(client, world, world.team, "x" * 40)["status"] == 422
    assert _threads(world) == 0


def test_a_patient_sending_a_patient_id_is_refused(
    client: TestClient, world: World, topic: str
) -> None:
    refused = client.post(
        "/api/v1/messaging/threads",
        json={"patient_id": world.patients["otto"], "subject": "Hi", "body": "Hello"},
        headers=world.patient("zeb"),
    )
    assert refused.status_code == 403
    assert _threads(world) == 0


def test_a_team_sending_a_topic_is_refused(client: TestClient, world: World, topic: str) -> None:
    refused = client.post(
        "/api/v1/messaging/threads",
        json={
            "patient_id": world.patients["zeb"],
            "topic_id": topic,
            "subject": "Hi",
            "body": "Hello",
        },
        headers=world.app(),
    )
    assert refused.status_code == 400
    assert _threads(world) == 0


def _age(world: World, thread_id: str, hours: int) -> None:
    with transaction(world.runtime.sessions) as db:
        db.execute(
            update(Thread)
            .where(Thread.id == thread_id)
            .values(created_at=utcnow() - timedelta(hours=hours))
        )


def test_an_unanswered_patient_thread_is_escalated_once(
    client: TestClient, world: World, topic: str
) -> None:
    configure(world.runtime, world.team, actor="t", escalate_after=timedelta(hours=4))
    waiting = _write(client, world, world.team, topic)["body"]["thread"]["id"]  # type: ignore[index]
    answered = _write(client, world, world.team, topic)["body"]["thread"]["id"]  # type: ignore[index]
    client.post(
        f"/api/v1/messaging/threads/{answered}/messages",
        json={"body": "On it."},
        headers=world.staff(),
    )
    # Not yet due: the automatic reply does not count as an answer, but 4 hours have not passed.
    assert escalate_due(world.runtime) == []
    _age(world, waiting, 5)
    _age(world, answered, 5)
    assert escalate_due(world.runtime) == [waiting]
    assert escalate_due(world.runtime) == []
    with world.runtime.sessions() as db:
        escalated = db.scalars(
            select(AuditRecord.target).where(AuditRecord.action == "messaging.thread.escalate")
        ).all()
    assert escalated == [f"thread:{waiting}"]
    listed = client.get("/api/v1/messaging/threads", headers=world.app()).json()["threads"]
    flags = {t["id"]: t["escalated_at"] is not None for t in listed}
    assert flags == {waiting: True, answered: False}


def test_the_new_message_page_writes_to_a_team_with_an_attachment(
    client: TestClient, world: World, topic: str
) -> None:
    patient_browser(client, world, "zeb")
    page = client.get("/messages/new")
    assert page.status_code == 200
    assert f'value="{world.team}:{topic}"' in page.text and "Prescription refill" in page.text
    sent = client.post(
        "/messages/new",
        data={
            "csrf_token": factories.csrf(page.text),
            "topic": f"{world.team}:{topic}",
            "subject": "Refill please",
            "body": "My usual one",
        },
        files={"file": ("scan.png", PNG, "image/png")},
        follow_redirects=False,
    )
    assert sent.status_code == 303, sent.text
    shown = client.get(sent.headers["location"])
    assert "My usual one" in shown.text and AUTO_REPLY in shown.text and "scan.png" in shown.text


def test_the_new_message_page_refuses_another_teams_topic_kindly(
    client: TestClient, world: World, topic: str
) -> None:
    other_topic = add_topic(world.runtime, world.other_team, "Billing", actor="t")
    patient_browser(client, world, "zeb")
    page = client.get("/messages/new")
    refused = client.post(
        "/messages/new",
        data={
            "csrf_token": factories.csrf(page.text),
            "topic": f"{world.team}:{other_topic}",
            "subject": "Kept",
            "body": "Draft kept",
        },
        files={"file": ("", b"", "application/octet-stream")},
    )
    assert refused.status_code == 422
    assert "This care team offers no such topic." in refused.text and "Draft kept" in refused.text
    assert _threads(world) == 0
