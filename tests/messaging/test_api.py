"""The messaging API as an OAuth resource server: who reaches which thread, what is
written, and that every attempt is audited with IDs only (both backends)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.keyring import SigningKey
from carebridge.runtime import Runtime
from identity.oidc import subjects
from messaging import access, care_teams
from messaging.models import Message, Thread
from sms.models import Notification
from tests.tokens import mint

from .conftest import OTHER_APP, PATIENT_APP, PROVIDER_APP, World, start_thread


def audit_log(runtime: Runtime) -> list[AuditRecord]:
    with runtime.sessions() as db:
        return list(db.scalars(select(AuditRecord).order_by(AuditRecord.seq)))


def test_a_care_team_opens_a_thread_and_the_patient_reads_and_replies(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world, body="Your results are normal.")
    assert thread_id.startswith("th_") and len(thread_id) == 25

    listed = client.get("/api/v1/messaging/threads", headers=world.patient("zeb"))
    assert listed.status_code == 200
    [summary] = listed.json()["threads"]
    assert summary["id"] == thread_id
    assert summary["subject"] == "Your lab results"
    assert summary["unread"] == 1
    assert summary["care_team_name"] == "Northside clinic"

    detail = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.patient("zeb"))
    assert detail.status_code == 200
    [first] = detail.json()["messages"]
    assert first["body"] == "Your results are normal."
    assert first["author_kind"] == "app"
    assert first["author_id"] is None  # a patient does not learn who on the team wrote

    reply = client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "Thank you!"},
        headers=world.patient("zeb"),
    )
    assert reply.status_code == 201
    assert reply.json()["seq"] == 2

    read = client.post(f"/api/v1/messaging/threads/{thread_id}/read", headers=world.patient("zeb"))
    assert read.json() == {"last_read_seq": 2}
    listed = client.get("/api/v1/messaging/threads", headers=world.patient("zeb"))
    assert listed.json()["threads"][0]["unread"] == 0
    # The team has not read the patient's reply yet.
    team_view = client.get("/api/v1/messaging/threads", headers=world.app())
    assert team_view.json()["threads"][0]["unread"] == 1


def test_content_is_encrypted_at_rest(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world, subject="Biopsy follow-up", body="Zebra-lemon-42")
    with world.runtime.sessions() as db:
        thread = db.get(Thread, thread_id)
        assert thread is not None
        assert b"Biopsy" not in thread.subject_encrypted
        assert thread.data_key_wrapped is not None
        assert thread.kek_id == world.runtime.keyring.active_kek.kid
        message = db.scalars(select(Message).where(Message.thread_id == thread_id)).one()
        assert b"Zebra-lemon" not in message.body_encrypted


def test_a_care_team_message_enqueues_a_notification_with_ids_only(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)
    client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "Patient reply"},
        headers=world.patient("zeb"),
    )
    client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "Team follow-up"},
        headers=world.app(),
    )
    with world.runtime.sessions() as db:
        notes = list(db.scalars(select(Notification).order_by(Notification.created_at)))
    # The opening message and the follow-up, not the patient's own reply.
    assert [(n.patient_id, n.thread_id, n.kind) for n in notes] == [
        (world.patients["zeb"], thread_id, "new_message")
    ] * 2


def test_another_patients_thread_is_not_found_like_a_missing_one(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world, "zeb")
    theirs = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.patient("otto"))
    missing = client.get(
        "/api/v1/messaging/threads/th_AAAAAAAAAAAAAAAAAAAAAA", headers=world.patient("otto")
    )
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["detail"] == missing.json()["detail"]
    posted = client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "let me in"},
        headers=world.patient("otto"),
    )
    assert posted.status_code == 404
    assert client.get("/api/v1/messaging/threads", headers=world.patient("otto")).json() == {
        "threads": [],
        "next_cursor": None,
    }
    denied = [r for r in audit_log(world.runtime) if r.outcome == "denied"]
    otto = f"patient:{world.patients['otto']}"
    assert (otto, "messaging.thread.read", f"thread:{thread_id}") in [
        (r.actor, r.action, r.target) for r in denied
    ]
    assert (otto, "messaging.message.post", f"thread:{thread_id}") in [
        (r.actor, r.action, r.target) for r in denied
    ]


def test_another_care_teams_app_cannot_reach_the_thread(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    other = world.app(OTHER_APP)
    assert client.get(f"/api/v1/messaging/threads/{thread_id}", headers=other).status_code == 404
    assert client.get("/api/v1/messaging/threads", headers=other).json()["threads"] == []


def test_staff_act_for_their_team_and_others_of_the_app_do_not(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)
    staff = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.staff())
    assert staff.status_code == 200
    posted = client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "From the nurse"},
        headers=world.staff(),
    )
    assert posted.json()["author_kind"] == "staff"
    assert posted.json()["author_id"] == world.staff_account
    # A user of the provider app who is not staff (no subject mapping) acts for no one.
    stranger = world.staff(subject="someone-else")
    assert client.get(f"/api/v1/messaging/threads/{thread_id}", headers=stranger).status_code == 404
    assert client.get("/api/v1/messaging/threads", headers=stranger).status_code == 403


def test_patients_cannot_open_or_close_threads(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    created = client.post(
        "/api/v1/messaging/threads",
        json={"patient_id": world.patients["zeb"], "subject": "hi", "body": "hello"},
        headers=world.patient("zeb"),
    )
    assert created.status_code == 403
    closed = client.post(
        f"/api/v1/messaging/threads/{thread_id}/close", headers=world.patient("zeb")
    )
    assert closed.status_code == 403


def test_a_closed_thread_takes_no_more_messages(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    closed = client.post(f"/api/v1/messaging/threads/{thread_id}/close", headers=world.app())
    assert closed.status_code == 204
    reply = client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "hello?"},
        headers=world.patient("zeb"),
    )
    assert reply.status_code == 409
    detail = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.patient("zeb"))
    assert detail.json()["thread"]["status"] == "closed"


def test_an_unknown_patient_id_is_refused(client: TestClient, world: World) -> None:
    response = client.post(
        "/api/v1/messaging/threads",
        json={"patient_id": "pat_doesnotexist", "subject": "hi", "body": "hello"},
        headers=world.app(),
    )
    assert response.status_code == 422
    with world.runtime.sessions() as db:
        assert db.scalars(select(Thread)).all() == []


def test_threads_wait_for_a_patient_without_an_account(client: TestClient, world: World) -> None:
    # pip is on the roster but has not signed up: the thread is kept for them.
    assert start_thread(client, world, "pip").startswith("th_")


# Tokens


def test_scopes_are_enforced(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    read_only = world.patient("zeb", scope="messaging.read")
    posted = client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages", json={"body": "x"}, headers=read_only
    )
    assert posted.status_code == 403
    assert "insufficient_scope" in posted.headers["www-authenticate"]
    no_scope = world.patient("zeb", scope="openid")
    assert client.get("/api/v1/messaging/threads", headers=no_scope).status_code == 403


def test_tokens_for_another_audience_expired_or_from_an_unknown_key_are_refused(
    client: TestClient, world: World, runtime: Runtime
) -> None:
    thread_id = start_thread(client, world)
    url = f"/api/v1/messaging/threads/{thread_id}"
    scope = "messaging.read messaging.write"
    wrong_audience = mint(
        runtime, sub="sub-zeb", client_id=PATIENT_APP, scope=scope, aud="https://elsewhere/api"
    )
    expired = mint(runtime, sub="sub-zeb", client_id=PATIENT_APP, scope=scope, lifetime=-3600)
    unknown_key = mint(
        runtime,
        sub="sub-zeb",
        client_id=PATIENT_APP,
        scope=scope,
        key=SigningKey.generate("ES256"),
    )
    for token in (wrong_audience, expired, unknown_key, "not-a-jwt"):
        response = client.get(url, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "messages" not in response.json()
    assert client.get(url).status_code == 401
    refused = [r for r in audit_log(runtime) if r.actor == "token:refused"]
    assert len(refused) == 5
    assert {r.target for r in refused} == {f"thread:{thread_id}"}


def test_a_client_credentials_token_of_a_client_without_a_team_acts_for_no_one(
    client: TestClient, world: World
) -> None:
    lonely = world.app("lonely-app")
    assert client.get("/api/v1/messaging/threads", headers=lonely).status_code == 403


def test_a_client_removed_from_its_team_loses_access_within_the_cache_time(
    client: TestClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread_id = start_thread(client, world)
    app = world.app()
    assert client.get(f"/api/v1/messaging/threads/{thread_id}", headers=app).status_code == 200
    care_teams.remove_client(world.runtime, world.team, PROVIDER_APP, actor="test")
    later = time.monotonic() + access.TEAM_CACHE_SECONDS + 1
    monkeypatch.setattr(access.time, "monotonic", lambda: later)
    assert client.get(f"/api/v1/messaging/threads/{thread_id}", headers=app).status_code == 404
    # Added back (to its team, as an operator would), it acts again at once.
    care_teams.add_client(world.runtime, world.team, PROVIDER_APP, actor="test")
    assert client.get(f"/api/v1/messaging/threads/{thread_id}", headers=app).status_code == 200


# Pagination


def test_threads_and_messages_are_paginated_by_cursor(client: TestClient, world: World) -> None:
    made = [start_thread(client, world, subject=f"Subject {n}") for n in range(5)]
    seen: list[str] = []
    cursor = ""
    while True:
        page = client.get(
            f"/api/v1/messaging/threads?limit=2&cursor={cursor}", headers=world.patient("zeb")
        ).json()
        seen += [t["id"] for t in page["threads"]]
        if not page["next_cursor"]:
            break
        cursor = page["next_cursor"]
    assert sorted(seen) == sorted(made) and len(seen) == 5

    thread_id = made[0]
    for n in range(4):
        client.post(
            f"/api/v1/messaging/threads/{thread_id}/messages",
            json={"body": f"m{n}"},
            headers=world.app(),
        )
    first = client.get(
        f"/api/v1/messaging/threads/{thread_id}?limit=3", headers=world.patient("zeb")
    ).json()
    assert [m["seq"] for m in first["messages"]] == [1, 2, 3]
    second = client.get(
        f"/api/v1/messaging/threads/{thread_id}?limit=3&cursor={first['next_cursor']}",
        headers=world.patient("zeb"),
    ).json()
    assert [m["body"] for m in second["messages"]] == ["m2", "m3"]
    assert second["next_cursor"] is None
    bad = client.get("/api/v1/messaging/threads?cursor=%%%", headers=world.patient("zeb"))
    assert bad.status_code == 400
    assert client.get("/api/v1/messaging/threads?limit=0", headers=world.app()).status_code == 400


# Audit


def test_every_read_and_write_is_audited_with_ids_only(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world, subject="Secret subject", body="Secret body text")
    client.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.patient("zeb"))
    client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "Another secret"},
        headers=world.patient("zeb"),
    )
    records = audit_log(world.runtime)
    actions = [(r.actor, r.action, r.outcome) for r in records]
    zeb = f"patient:{world.patients['zeb']}"
    assert (f"app:{PROVIDER_APP}", "messaging.thread.create", "allowed") in actions
    assert (zeb, "messaging.thread.read", "allowed") in actions
    assert (zeb, "messaging.message.post", "allowed") in actions
    for record in records:
        text = f"{record.actor} {record.action} {record.target}"
        assert "Secret" not in text and "secret" not in text.lower()


def test_openapi_describes_the_messaging_api(client: TestClient) -> None:
    document = client.get("/api/openapi.json").json()
    paths = document["paths"]
    assert {"get", "post"} <= set(paths["/api/v1/messaging/threads"])
    for path, method in [
        ("/api/v1/messaging/threads/{thread_id}", "get"),
        ("/api/v1/messaging/threads/{thread_id}/messages", "post"),
        ("/api/v1/messaging/threads/{thread_id}/attachments", "post"),
        ("/api/v1/messaging/threads/{thread_id}/attachments/{attachment_id}", "get"),
        ("/api/v1/messaging/threads/{thread_id}/read", "post"),
        ("/api/v1/messaging/threads/{thread_id}/close", "post"),
        ("/api/v1/messaging/export", "get"),
    ]:
        assert method in paths[path], path
    for name in ("ThreadList", "ThreadDetail", "MessageOut", "NewThread", "NewMessage"):
        assert name in document["components"]["schemas"]


def test_concurrent_posts_to_one_thread_get_distinct_sequence_numbers(
    client: TestClient, world: World
) -> None:
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    from messaging import threads  # noqa: PLC0415
    from messaging.access import Caller, perform  # noqa: PLC0415

    thread_id = start_thread(client, world)
    runtime = world.runtime
    caller = Caller.of_patient(world.patients["zeb"])

    def post(n: int) -> int:
        posted = perform(
            runtime,
            caller,
            action="messaging.message.post",
            target=f"thread:{thread_id}",
            request_id=None,
            work=lambda db, actor: threads.post_message(
                db, runtime.keyring, runtime.settings, actor, thread_id, body=f"m{n}"
            ),
        )
        return posted.seq

    with ThreadPoolExecutor(max_workers=6) as pool:
        seqs = sorted(pool.map(post, range(12)))
    assert seqs == list(range(2, 14))
    with runtime.sessions() as db:
        thread = db.get(Thread, thread_id)
        assert thread is not None and thread.last_seq == 13


def test_a_disabled_accounts_tokens_stop_working_before_they_expire(
    client: TestClient, world: World
) -> None:
    from sqlalchemy import update  # noqa: PLC0415

    from carebridge.db import transaction  # noqa: PLC0415
    from identity.models import Account  # noqa: PLC0415

    thread_id = start_thread(client, world)
    url = f"/api/v1/messaging/threads/{thread_id}"
    assert client.get(url, headers=world.patient("zeb")).status_code == 200
    assert client.get(url, headers=world.staff()).status_code == 200
    with transaction(world.runtime.sessions) as db:
        db.execute(
            update(Account)
            .where(Account.id.in_([world.accounts["zeb"], world.staff_account]))
            .values(status="disabled")
        )
    assert client.get(url, headers=world.patient("zeb")).status_code == 404
    assert client.get(url, headers=world.staff()).status_code == 404
    assert client.get(url, headers=world.app()).status_code == 200


def test_patient_apps_never_see_the_global_patient_id(client: TestClient, world: World) -> None:
    """Two apps the same patient connected, with different pairwise subjects, cannot
    join on the patient ID: threads, messages and their own posts leave it out."""
    thread_id = start_thread(client, world, "zeb")
    with transaction(world.runtime.sessions) as db:
        subjects.record(
            db, client_id="other-app", subject="pairwise-xyz", account_id=world.accounts["zeb"]
        )
    other = world.headers(
        mint(world.runtime, sub="pairwise-xyz", client_id="other-app", scope="messaging.read")
    )
    patient_id = world.patients["zeb"]
    posted = client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "hi"},
        headers=world.patient("zeb"),
    )
    assert posted.status_code == 201 and posted.json()["author_id"] is None
    for headers in (world.patient("zeb"), other):
        listed = client.get("/api/v1/messaging/threads", headers=headers)
        assert listed.status_code == 200
        assert [t["patient_id"] for t in listed.json()["threads"]] == [None]
        detail = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=headers)
        assert detail.status_code == 200
        assert patient_id not in detail.text and patient_id not in listed.text
    # The care team addresses the patient by that ID, and still sees it.
    team = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.app())
    assert team.json()["thread"]["patient_id"] == patient_id
