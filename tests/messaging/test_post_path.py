"""The post path: on PostgreSQL, a post to a thread whose key this process holds writes
the claim, message, notice, read position and audit record together (how many statements
the path may take: tests/carebridge/db/test_hot_path_bounds.py); anything that changed
since the key was cached sends it the long way, which answers as before (both backends)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from messaging import crypto
from messaging.models import Message, Thread, ThreadReadState
from sms.models import Notification

from .conftest import OTHER_APP, PROVIDER_APP, World, start_thread


def post(client: TestClient, world: World, thread_id: str, body: str, headers: Any = None) -> Any:
    return client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": body},
        headers=headers or world.app(),
    )


def messages(world: World, thread_id: str) -> int:
    with world.runtime.sessions() as db:
        return int(
            db.scalar(
                select(func.count()).select_from(Message).where(Message.thread_id == thread_id)
            )
            or 0
        )


def test_a_post_under_a_key_in_hand_writes_everything(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)  # its answer opened the thread's key
    assert crypto.recent_key(world.runtime.keyring, thread_id) is not None
    posted = post(client, world, thread_id, "Your prescription is ready.")
    assert posted.status_code == 201, posted.text
    assert posted.json()["seq"] == 2

    # Everything the long way writes, written.
    read = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.patient("zeb"))
    assert [m["body"] for m in read.json()["messages"]] == [
        "Everything looks fine.",
        "Your prescription is ready.",
    ]
    with world.runtime.sessions() as db:
        notices = db.scalars(select(Notification).where(Notification.thread_id == thread_id))
        assert [n.patient_id for n in notices] == [world.patients["zeb"]] * 2
        # An app's own token writes for no person: no read position moved.
        assert db.get(ThreadReadState, (thread_id, "team")) is None
        thread = db.get(Thread, thread_id)
        assert thread is not None and thread.last_seq == 2
        posts = db.scalars(
            select(AuditRecord).where(AuditRecord.action == "messaging.message.post")
        ).all()
    assert [(r.actor, r.outcome, r.target) for r in posts] == [
        (f"app:{PROVIDER_APP}", "allowed", f"thread:{thread_id}")
    ]


def rewrap_in_place(world: World, thread_id: str) -> None:
    """Wrap the thread's data key again (new bytes, same key), as a rotation would."""
    keyring = world.runtime.keyring
    with transaction(world.runtime.sessions) as db:
        thread = db.get(Thread, thread_id)
        assert thread is not None and thread.data_key_wrapped is not None
        key = crypto.cipher_for(keyring, thread).key
        thread.data_key_wrapped = keyring.wrap_data_key(key, crypto._key_context(thread_id))


def test_a_staff_post_under_a_key_in_hand_moves_the_teams_read_position(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)
    assert post(client, world, thread_id, "Hello", headers=world.patient("zeb")).is_success
    assert crypto.recent_key(world.runtime.keyring, thread_id) is not None

    posted = post(client, world, thread_id, "Seen, thanks.", headers=world.staff())

    assert posted.status_code == 201, posted.text
    assert posted.json()["seq"] == 3
    with world.runtime.sessions() as db:
        team = db.get(ThreadReadState, (thread_id, "team"))
        assert team is not None and team.last_read_seq == 3
        patient = db.get(ThreadReadState, (thread_id, "patient"))
        assert patient is not None and patient.last_read_seq == 2


def test_a_key_rewrapped_since_it_was_cached_takes_the_long_way(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)
    cached = crypto.recent_key(world.runtime.keyring, thread_id)
    assert cached is not None
    rewrap_in_place(world, thread_id)
    posted = post(client, world, thread_id, "After the rewrap")
    assert posted.status_code == 201, posted.text
    recent = crypto.recent_key(world.runtime.keyring, thread_id)
    assert recent is not None and recent[0] != cached[0]  # the new wrapping, remembered
    read = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.app())
    assert [m["body"] for m in read.json()["messages"]][-1] == "After the rewrap"
    assert [m["seq"] for m in read.json()["messages"]] == [1, 2]
    # The request's audit record, taken for the one statement, went the long way too.
    with world.runtime.sessions() as db:
        posts = db.scalars(
            select(AuditRecord.outcome).where(AuditRecord.action == "messaging.message.post")
        ).all()
    assert posts == ["allowed"]


def shred(world: World, thread_id: str) -> None:
    with transaction(world.runtime.sessions) as db:
        thread = db.get(Thread, thread_id)
        assert thread is not None
        thread.data_key_wrapped = None
        thread.shredded_at = datetime.now(UTC)


@pytest.mark.parametrize(
    ("change", "status"),
    [("closed", 409), ("shredded", 410), ("another team posts", 404)],
)
def test_a_thread_changed_since_its_key_was_cached_is_refused_as_before(
    client: TestClient, world: World, change: str, status: int
) -> None:
    thread_id = start_thread(client, world)
    assert crypto.recent_key(world.runtime.keyring, thread_id) is not None
    headers = world.app()
    if change == "closed":
        client.post(f"/api/v1/messaging/threads/{thread_id}/close", headers=world.app())
    elif change == "shredded":
        shred(world, thread_id)
    else:
        headers = world.app(OTHER_APP)
    refused = post(client, world, thread_id, "Should not land", headers)
    assert refused.status_code == status, refused.text
    assert messages(world, thread_id) == 1
    with world.runtime.sessions() as db:
        thread = db.get(Thread, thread_id)
        assert thread is not None and thread.last_seq == 1
        outcomes = db.scalars(
            select(AuditRecord.outcome).where(AuditRecord.action == "messaging.message.post")
        ).all()
        notices = db.scalar(select(func.count()).select_from(Notification))
    # Audited once, as refused; no notice beyond the opening message's.
    assert outcomes == ["denied" if status in (404, 410) else "failed"]
    assert notices == 1


def test_an_expired_key_entry_is_not_used(
    client: TestClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(crypto, "KEY_CACHE_SECONDS", -1.0)  # every entry born expired
    thread_id = start_thread(client, world)
    assert crypto.recent_key(world.runtime.keyring, thread_id) is None
    posted = post(client, world, thread_id, "The long way")
    assert posted.status_code == 201 and posted.json()["seq"] == 2


def test_thread_keys_are_forgotten_once_expired_even_without_requests(
    client: TestClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(crypto, "KEY_CACHE_SECONDS", 0.2)
    thread_id = start_thread(client, world)
    held = crypto._recent_of(world.runtime.keyring)
    assert crypto.recent_key(world.runtime.keyring, thread_id) is not None
    time.sleep(0.3)
    crypto.forget_expired()  # what the web process's sweep runs every few seconds
    assert held._entries == {}


def test_a_thread_seen_shredded_drops_its_key(world: World, client: TestClient) -> None:
    thread_id = start_thread(client, world)
    shred(world, thread_id)
    with world.runtime.sessions() as db:
        thread = db.get(Thread, thread_id)
        assert thread is not None
        with pytest.raises(crypto.ShreddedError):
            crypto.cipher_for(world.runtime.keyring, thread)
    assert crypto.recent_key(world.runtime.keyring, thread_id) is None
