"""Marking a thread read is a write (issue 17): it clears the patient's unread badges in
every app and on the web, so a token that may only read cannot do it."""

from __future__ import annotations

from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord, Outcome
from tests.messaging.conftest import World, start_thread


def unread(client: TestClient, world: World) -> int:
    listed = client.get("/api/v1/messaging/threads", headers=world.patient("zeb"))
    count: int = listed.json()["threads"][0]["unread"]
    return count


def test_a_read_only_token_cannot_mark_threads_read(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    assert unread(client, world) == 1
    read_only = world.patient("zeb", scope="messaging.read")
    # It may still read the thread (reading does not mark it read)...
    assert client.get(f"/api/v1/messaging/threads/{thread_id}", headers=read_only).is_success

    response = client.post(f"/api/v1/messaging/threads/{thread_id}/read", headers=read_only)

    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and "messaging.write" in challenge
    assert unread(client, world) == 1
    with world.runtime.sessions() as db:
        denied = db.scalars(
            select(AuditRecord).where(AuditRecord.action == "messaging.thread.mark_read")
        ).all()
    assert [(r.outcome, r.target) for r in denied] == [(Outcome.DENIED, f"thread:{thread_id}")]


def test_a_token_that_may_write_marks_threads_read(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    write_only = world.patient("zeb", scope="messaging.write")
    response = client.post(f"/api/v1/messaging/threads/{thread_id}/read", headers=write_only)
    assert response.json() == {"last_read_seq": 1}
    assert unread(client, world) == 0


def test_openapi_says_marking_read_needs_the_write_scope(client: TestClient) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    operation = paths["/api/v1/messaging/threads/{thread_id}/read"]["post"]
    assert operation["security"] == [{"accessToken": ["messaging.write"]}]
