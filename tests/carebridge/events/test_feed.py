"""The event feed: a client's events after an opaque cursor bound to it, long-polling,
the same events its webhooks carry, and only for threads its tokens could read."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.testclient import TestClient

from carebridge import events
from carebridge.app import create_app
from carebridge.db import transaction
from carebridge.events import feed
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from carebridge.utc import utcnow
from identity.oidc import clients, consents, subjects
from tests.messaging.conftest import OTHER_APP, PROVIDER_APP, World, build_world, start_thread
from tests.tokens import mint


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture
def world(runtime: Runtime, tmp_path: Path) -> World:
    return build_world(runtime, tmp_path)


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), raise_server_exceptions=False) as test_client:
        yield test_client


def feed_token(runtime: Runtime, client_id: str = PROVIDER_APP) -> dict[str, str]:
    token = mint(runtime, sub=client_id, client_id=client_id, scope="events.read")
    return {"Authorization": f"Bearer {token}"}


def settle() -> None:
    time.sleep(feed.SETTLE.total_seconds() + 0.1)


def read(
    client: TestClient, runtime: Runtime, query: str = "", client_id: str = PROVIDER_APP
) -> dict[str, Any]:
    response = client.get(f"/api/v1/events{query}", headers=feed_token(runtime, client_id))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_feed_lists_the_clients_events_in_order_and_moves_on_by_cursor(
    runtime: Runtime, world: World, client: TestClient
) -> None:
    thread_id = start_thread(client, world, subject="Your biopsy")
    settle()
    first = read(client, runtime)
    assert [e["type"] for e in first["events"]] == ["thread.created", "message.created"]
    assert {e["data"]["thread"] for e in first["events"]} == {thread_id}
    assert "biopsy" not in str(first)
    closed = client.post(f"/api/v1/messaging/threads/{thread_id}/close", headers=world.app())
    assert closed.status_code == 204
    settle()
    after = read(client, runtime, f"?after={first['cursor']}")
    assert [e["type"] for e in after["events"]] == ["thread.closed"]
    nothing = read(client, runtime, f"?after={after['cursor']}")
    assert nothing["events"] == [] and nothing["cursor"] == after["cursor"]
    # Another team's app hears nothing of this team's thread.
    assert read(client, runtime, client_id=OTHER_APP)["events"] == []


def test_another_clients_cursor_is_refused(
    runtime: Runtime, world: World, client: TestClient
) -> None:
    start_thread(client, world)
    settle()
    theirs = read(client, runtime)["cursor"]
    stolen = client.get(f"/api/v1/events?after={theirs}", headers=feed_token(runtime, OTHER_APP))
    assert stolen.status_code == 400
    assert stolen.headers["content-type"].startswith("application/problem+json")
    made_up = client.get("/api/v1/events?after=1.00", headers=feed_token(runtime))
    assert made_up.status_code == 400


def test_a_token_bound_to_a_person_or_without_the_scope_is_refused(
    runtime: Runtime, world: World, client: TestClient
) -> None:
    person = mint(runtime, sub="staff-sub", client_id=PROVIDER_APP, scope="events.read")
    response = client.get("/api/v1/events", headers={"Authorization": f"Bearer {person}"})
    assert response.status_code == 403
    assert client.get("/api/v1/events", headers=world.app()).status_code == 403
    assert client.get("/api/v1/events").status_code == 401


def test_the_feed_waits_for_a_new_event_then_answers_at_once(
    runtime: Runtime, world: World, client: TestClient
) -> None:
    cursor = read(client, runtime)["cursor"]

    def later() -> None:
        time.sleep(0.5)
        with transaction(runtime.sessions) as db:
            events.emit(
                db, events.THREAD_CLOSED, [events.Audience(PROVIDER_APP, "p")], {"thread": "t"}
            )

    writer = threading.Thread(target=later)
    started = time.monotonic()
    writer.start()
    answer = read(client, runtime, f"?after={cursor}&wait=10")
    writer.join()
    assert [e["type"] for e in answer["events"]] == ["thread.closed"]
    assert time.monotonic() - started < 8
    # Nothing new: the answer comes once the wait is over, empty.
    started = time.monotonic()
    assert read(client, runtime, f"?after={answer['cursor']}&wait=1")["events"] == []
    assert time.monotonic() - started >= 1


def test_a_patient_app_hears_of_the_patients_thread_by_its_pairwise_subject(
    runtime: Runtime, world: World, client: TestClient
) -> None:
    with transaction(runtime.sessions) as db:
        app = clients.create(
            db,
            runtime.settings,
            name="Diary",
            client_type="confidential",
            redirect_uris=["https://diary.example/cb"],
            scopes=["openid", "messaging.read"],
        ).client_id
        unrelated = clients.create(
            db,
            runtime.settings,
            name="Steps",
            client_type="confidential",
            redirect_uris=["https://steps.example/cb"],
            scopes=["openid"],
        ).client_id
        for client_id, scope in ((app, "openid messaging.read"), (unrelated, "openid")):
            subject = subjects.pairwise(
                runtime.keyring, sector=f"{client_id}.example", account_id=world.accounts["zeb"]
            )
            subjects.record(
                db, client_id=client_id, subject=subject, account_id=world.accounts["zeb"]
            )
            consents.remember(
                db, account_id=world.accounts["zeb"], client_id=client_id, scope=scope
            )
    thread_id = start_thread(client, world)
    settle()
    heard = read(client, runtime, client_id=app)["events"]
    assert [e["data"]["thread"] for e in heard] == [thread_id, thread_id]
    assert {e["data"]["patient"] for e in heard} != {world.patients["zeb"]}  # pairwise
    # An app without messaging.read hears nothing; neither does a disabled one.
    assert read(client, runtime, client_id=unrelated)["events"] == []
    with transaction(runtime.sessions) as db:
        clients.disable(db, app)
    start_thread(client, world, subject="Another")
    settle()
    with runtime.sessions() as db:
        after = feed.read(db, runtime.keyring, app, 0, utcnow())
    assert len(after.events) == 2


def test_a_person_reading_emits_message_read_an_integration_reading_does_not(
    runtime: Runtime, world: World, client: TestClient
) -> None:
    thread_id = start_thread(client, world)
    reply = client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "Thanks"},
        headers=world.patient("zeb"),
    )
    assert reply.status_code == 201
    app_read = client.post(f"/api/v1/messaging/threads/{thread_id}/read", headers=world.app())
    assert app_read.status_code == 403  # an app's own token reads for nobody
    settle()
    assert "message.read" not in [e["type"] for e in read(client, runtime)["events"]]
    staff_read = client.post(f"/api/v1/messaging/threads/{thread_id}/read", headers=world.staff())
    assert staff_read.status_code == 200
    again = client.post(f"/api/v1/messaging/threads/{thread_id}/read", headers=world.staff())
    assert again.status_code == 200  # nothing new read: no second event
    settle()
    read_events = [e for e in read(client, runtime)["events"] if e["type"] == "message.read"]
    assert len(read_events) == 1
    assert read_events[0]["data"]["reader"] == "care_team"
    assert read_events[0]["data"]["message"] == reply.json()["id"]


def test_an_event_reaching_an_app_after_the_patient_revoked_it_is_refused(
    runtime: Runtime, world: World, client: TestClient
) -> None:
    """Events written while the app was authorized, still unread (or queued for its
    webhooks) when the patient revokes it: they are taken back, not handed over."""
    with transaction(runtime.sessions) as db:
        app = clients.create(
            db,
            runtime.settings,
            name="Diary",
            client_type="confidential",
            redirect_uris=["https://diary.example/cb"],
            scopes=["openid", "messaging.read"],
        ).client_id
        subject = subjects.pairwise(
            runtime.keyring, sector="diary.example", account_id=world.accounts["zeb"]
        )
        subjects.record(db, client_id=app, subject=subject, account_id=world.accounts["zeb"])
        consents.remember(
            db, account_id=world.accounts["zeb"], client_id=app, scope="openid messaging.read"
        )
    start_thread(client, world)
    settle()
    assert len(read(client, runtime, client_id=app)["events"]) == 2
    assert consents.revoke(runtime, world.accounts["zeb"], app, request_id=None)
    start_thread(client, world, subject="After the revocation")
    settle()
    # Nothing of the patient's threads, before or after: only that the grant is gone.
    assert [e["type"] for e in read(client, runtime, client_id=app)["events"]] == ["grant.revoked"]
    # The care team's client is told of both threads still.
    assert len(read(client, runtime)["events"]) == 4


@pytest.mark.parametrize("query", ["?after=%C2%B2.x", "?wait=%C2%B2", "?after=%D9%A1.x"])
def test_a_cursor_or_wait_in_unicode_digits_is_refused_not_an_error(
    runtime: Runtime, world: World, client: TestClient, query: str
) -> None:
    response = client.get(f"/api/v1/events{query}", headers=feed_token(runtime))
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")


def test_long_poll_exhaustion_by_one_client_is_refused(runtime: Runtime, world: World) -> None:
    """A client opening many waiting requests gets 429 past its bound, at once, while
    another client's request still waits; the slots come back after the answers."""
    # A thread of its own: the browser tests' Playwright keeps a loop in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(anyio.run, _exhaust, runtime).result()


async def _exhaust(runtime: Runtime) -> None:
    app = create_app(runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
        cursor = (await api.get("/api/v1/events", headers=feed_token(runtime))).json()["cursor"]
        other = (await api.get("/api/v1/events", headers=feed_token(runtime, OTHER_APP))).json()[
            "cursor"
        ]
        limit = runtime.settings.event_feed_max_waiting_per_client

        async def ask(client_id: str, after: str) -> tuple[int, float, str | None]:
            started = time.monotonic()
            response = await api.get(
                f"/api/v1/events?after={after}&wait=2", headers=feed_token(runtime, client_id)
            )
            return (
                response.status_code,
                time.monotonic() - started,
                response.headers.get("retry-after"),
            )

        answers: list[tuple[int, float, str | None]] = []

        async def record(client_id: str, after: str) -> None:
            answers.append(await ask(client_id, after))

        async with anyio.create_task_group() as group:
            for _ in range(limit + 3):
                group.start_soon(record, PROVIDER_APP, cursor)
            group.start_soon(record, OTHER_APP, other)
        refused = [a for a in answers if a[0] == 429]
        waited = [a for a in answers if a[0] == 200]
        assert len(refused) == 3
        assert all(seconds < 1.5 and retry == "2" for _, seconds, retry in refused)
        assert len(waited) == limit + 1  # the other client's among them
        assert all(seconds >= 2 for _, seconds, _ in waited)
        # Once answered, the client may wait again.
        assert (await ask(PROVIDER_APP, cursor))[0] == 200


def test_a_revoked_app_hearing_of_later_replies_is_refused(
    runtime: Runtime, world: World, client: TestClient
) -> None:
    # A post asks who hears of it in one statement (messaging.events.message_recipients,
    # identity's apps_of_patient_query folded in), before its claim: the same answer as
    # identity's question, asked again by every post, so a revocation holds at once.
    zeb = world.accounts["zeb"]
    with transaction(runtime.sessions) as db:
        made = {
            name: clients.create(
                db,
                runtime.settings,
                name=name,
                client_type="confidential",
                redirect_uris=[f"https://{name.lower()}.example/cb"],
                scopes=["openid", "messaging.read"],
            ).client_id
            for name in ("Diary", "Lookalike")
        }
        subject = subjects.pairwise(runtime.keyring, sector="diary.example", account_id=zeb)
        for client_id in made.values():
            subjects.record(db, client_id=client_id, subject=subject, account_id=zeb)
        consents.remember(
            db, account_id=zeb, client_id=made["Diary"], scope="openid messaging.read"
        )
        # A grant whose scope only starts like messaging.read holds no messaging.read.
        consents.remember(
            db, account_id=zeb, client_id=made["Lookalike"], scope="openid messaging.read_x"
        )
    thread_id = start_thread(client, world)
    path = f"/api/v1/messaging/threads/{thread_id}/messages"
    reply = client.post(path, json={"body": "Any news?"}, headers=world.app())
    assert reply.status_code == 201, reply.text
    settle()
    heard = read(client, runtime, client_id=made["Diary"])["events"]
    assert [e["type"] for e in heard] == ["thread.created", "message.created", "message.created"]
    assert heard[-1]["data"]["message"] == reply.json()["id"]
    assert heard[-1]["data"]["patient"] == subject
    team = read(client, runtime)["events"]
    assert team[-1]["data"] == {**heard[-1]["data"], "patient": world.patients["zeb"]}
    assert read(client, runtime, client_id=made["Lookalike"])["events"] == []
    assert consents.revoke(runtime, zeb, made["Diary"], request_id=None)
    again = client.post(path, json={"body": "Still there?"}, headers=world.app())
    assert again.status_code == 201, again.text
    settle()
    with runtime.sessions() as db:
        after = feed.read(db, runtime.keyring, made["Diary"], 0, utcnow())
    # What it had heard is taken back too: only that its grant is gone.
    assert [event.type for event in after.events] == ["grant.revoked"]
    assert read(client, runtime)["events"][-1]["data"]["message"] == again.json()["id"]
