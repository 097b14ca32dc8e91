"""Read receipts and unread counts (issue 20): read state per side of a thread. A care
team has read a message when any of its staff did; an app's own token reads for nobody;
the patient sees "Read", never who; the audit log names the reader (both backends)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from identity.oidc import subjects
from messaging import care_teams
from tests.identity import factories

from .conftest import OTHER_APP, PROVIDER_APP, World, patient_browser, start_thread

API = "/api/v1/messaging"


def thread(client: TestClient, thread_id: str, headers: dict[str, str]) -> Any:
    response = client.get(f"{API}/threads/{thread_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def receipts(client: TestClient, thread_id: str, headers: dict[str, str]) -> list[Any]:
    return [m["read"] for m in thread(client, thread_id, headers)["messages"]]


def listed_unread(client: TestClient, headers: dict[str, str]) -> list[int]:
    response = client.get(f"{API}/threads", headers=headers)
    assert response.status_code == 200, response.text
    return [t["unread"] for t in response.json()["threads"]]


def summary(client: TestClient, headers: dict[str, str]) -> Any:
    response = client.get(f"{API}/unread", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def reply(client: TestClient, world: World, thread_id: str, body: str = "Thank you") -> None:
    posted = client.post(
        f"{API}/threads/{thread_id}/messages", json={"body": body}, headers=world.patient("zeb")
    )
    assert posted.status_code == 201, posted.text


def mark_read(client: TestClient, thread_id: str, headers: dict[str, str]) -> Any:
    return client.post(f"{API}/threads/{thread_id}/read", headers=headers)


def second_staff(world: World) -> tuple[str, dict[str, str]]:
    """Another staff member of the world's team, and their token."""
    account = factories.account(world.runtime)
    care_teams.add_staff(world.runtime, world.team, account, actor="t")
    with transaction(world.runtime.sessions) as db:
        subjects.record(db, client_id=PROVIDER_APP, subject="staff-2", account_id=account)
    return account, world.staff(subject="staff-2")


def test_the_patient_reading_shows_the_team_its_message_as_read(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)
    # The team's own message, not read yet by the patient; the patient's view has none
    # of theirs, so no receipts to show.
    assert receipts(client, thread_id, world.staff()) == [False]
    assert receipts(client, thread_id, world.patient("zeb")) == [None]

    assert mark_read(client, thread_id, world.patient("zeb")).json() == {"last_read_seq": 1}

    for team_side in (world.staff(), world.app()):
        detail = thread(client, thread_id, team_side)
        assert [m["read"] for m in detail["messages"]] == [True]
        assert detail["thread"]["other_side_read_seq"] == 1


def test_the_patients_page_reading_shows_the_team_its_message_as_read(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)
    patient_browser(client, world, "zeb")
    assert client.get(f"/messages/{thread_id}").status_code == 200  # viewing marks read
    assert receipts(client, thread_id, world.app()) == [True]


def test_one_staff_members_read_counts_for_the_whole_team(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    reply(client, world, thread_id)
    _, other_staff = second_staff(world)
    for team_side in (world.staff(), other_staff, world.app()):
        assert listed_unread(client, team_side) == [1]
        assert summary(client, team_side)["unread_messages"] == 1
    assert receipts(client, thread_id, world.patient("zeb")) == [None, False]

    assert mark_read(client, thread_id, world.staff()).json() == {"last_read_seq": 2}

    for team_side in (world.staff(), other_staff, world.app()):
        assert listed_unread(client, team_side) == [0]
        assert summary(client, team_side) == {
            "unread_messages": 0,
            "unread_threads": 0,
            "care_teams": [
                {
                    "care_team_id": world.team,
                    "care_team_name": "Northside clinic",
                    "unread_messages": 0,
                    "unread_threads": 0,
                }
            ],
        }
    assert receipts(client, thread_id, world.patient("zeb")) == [None, True]
    patient_browser(client, world, "zeb")
    page = client.get(f"/messages/{thread_id}")
    assert '<p class="muted receipt">Read</p>' in page.text


def test_an_app_token_marking_a_thread_read_is_refused(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    reply(client, world, thread_id)
    # The patient's reply read the team's message; the app reads the patient's.
    assert receipts(client, thread_id, world.app()) == [True, None]

    refused = mark_read(client, thread_id, world.app())

    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert listed_unread(client, world.staff()) == [1]
    assert receipts(client, thread_id, world.patient("zeb")) == [None, False]
    with world.runtime.sessions() as db:
        denied = db.scalars(
            select(AuditRecord).where(AuditRecord.action == "messaging.thread.mark_read")
        ).all()
    assert [(r.actor, r.outcome) for r in denied] == [(f"app:{PROVIDER_APP}", "denied")]


def test_a_patient_learning_which_staff_member_read_is_refused(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)
    reply(client, world, thread_id)
    reader, reader_token = second_staff(world)
    assert mark_read(client, thread_id, reader_token).status_code == 200

    patient = world.patient("zeb")
    answers = [
        client.get(f"{API}/threads/{thread_id}", headers=patient).text,
        client.get(f"{API}/threads", headers=patient).text,
        client.get(f"{API}/unread", headers=patient).text,
    ]
    patient_browser(client, world, "zeb")
    answers += [client.get(f"/messages/{thread_id}").text, client.get("/messages").text]
    assert '"read":true' in answers[0].replace(" ", "")
    for answer in answers:
        assert reader not in answer and world.staff_account not in answer
        assert "account:" not in answer


def test_the_audit_log_names_the_staff_member_who_read(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    reply(client, world, thread_id)
    reader, reader_token = second_staff(world)

    assert mark_read(client, thread_id, reader_token).status_code == 200

    with world.runtime.sessions() as db:
        records = db.scalars(
            select(AuditRecord).where(AuditRecord.action == "messaging.thread.mark_read")
        ).all()
    assert [(r.actor, r.outcome, r.target) for r in records] == [
        (f"account:{reader}", "allowed", f"thread:{thread_id}")
    ]


def test_a_teams_unread_count_is_the_patients_messages_only(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)
    reply(client, world, thread_id)
    # The app writes after the patient's unread message: still one unread for the team
    # (its own message is not unread, and writing as an app reads nothing).
    posted = client.post(
        f"{API}/threads/{thread_id}/messages", json={"body": "Noted."}, headers=world.app()
    )
    assert posted.status_code == 201
    assert posted.json()["read"] is False
    assert listed_unread(client, world.staff()) == [1]
    assert listed_unread(client, world.patient("zeb")) == [1]
    # A staff member's reply means they read what came before.
    staff_post = client.post(
        f"{API}/threads/{thread_id}/messages", json={"body": "Call us."}, headers=world.staff()
    )
    assert staff_post.status_code == 201
    assert listed_unread(client, world.staff()) == [0]
    assert receipts(client, thread_id, world.patient("zeb")) == [None, True, None, None]


def test_a_patients_unread_summary_has_a_line_per_care_team(
    client: TestClient, world: World
) -> None:
    start_thread(client, world)
    other = client.post(
        f"{API}/threads",
        json={"patient_id": world.patients["zeb"], "subject": "Visit", "body": "See you"},
        headers=world.app(OTHER_APP),
    )
    assert other.status_code == 201
    second = client.post(
        f"{API}/threads/{other.json()['thread']['id']}/messages",
        json={"body": "Bring your card"},
        headers=world.app(OTHER_APP),
    )
    assert second.status_code == 201

    found = summary(client, world.patient("zeb"))

    assert found["unread_messages"] == 3 and found["unread_threads"] == 2
    assert [(t["care_team_name"], t["unread_messages"]) for t in found["care_teams"]] == [
        ("Northside clinic", 1),
        ("Other clinic", 2),
    ]
    # A team's token sees its own team only.
    assert [t["care_team_id"] for t in summary(client, world.app())["care_teams"]] == [world.team]
