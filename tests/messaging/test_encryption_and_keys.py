"""Envelope encryption: ciphertexts bound to their rows, key rotation with re-wrap, a
missing or wrong KEK failing clearly (both backends)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge import keyring as keyring_module
from carebridge.app import create_app
from carebridge.cli import main
from carebridge.db import transaction
from carebridge.keyring import Keyring
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from messaging import crypto, keys
from messaging.models import Attachment, Message, Thread

from .conftest import World, start_thread


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def bodies(client: TestClient, world: World, thread_id: str) -> list[str]:
    response = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.app())
    assert response.status_code == 200, response.text
    return [m["body"] for m in response.json()["messages"]]


def test_a_body_copied_to_another_message_does_not_open(
    client: TestClient, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    thread_id = start_thread(client, world, body="first, private")
    client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "second"},
        headers=world.app(),
    )
    with transaction(world.runtime.sessions) as db:
        first, second = db.scalars(
            select(Message).where(Message.thread_id == thread_id).order_by(Message.seq)
        ).all()
        second.body_encrypted = first.body_encrypted
    with caplog.at_level(logging.INFO):
        response = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.app())
    assert response.status_code == 500
    assert "integrity" in response.json()["detail"]
    assert "first, private" not in response.text
    assert "first, private" not in caplog.text
    assert any(second.id in r.getMessage() for r in caplog.records)


def test_ciphertexts_do_not_move_between_threads_or_fields(world: World) -> None:
    keyring = world.runtime.keyring
    one, _ = crypto.new_thread_key(keyring, "th_one")
    blob = one.seal_text("msg_1", crypto.BODY, "hello")
    assert one.open_text("msg_1", crypto.BODY, blob) == "hello"
    with pytest.raises(crypto.TamperedError):
        one.open_text("msg_2", crypto.BODY, blob)
    with pytest.raises(crypto.TamperedError):
        one.open_text("msg_1", crypto.FILENAME, blob)
    # The same data key under another thread's ID: the context differs, so it fails.
    moved = crypto.ThreadCipher("th_two", one.key)
    with pytest.raises(crypto.TamperedError):
        moved.open_text("msg_1", crypto.BODY, blob)


def test_the_associated_data_is_the_schemas_known_bytes(world: World) -> None:
    """Content written by earlier releases must keep opening: the context a cipher builds
    is byte for byte the one the schema defines (length-prefixed, in this order)."""
    cipher, _ = crypto.new_thread_key(world.runtime.keyring, "th_one")
    expected = (
        b"\x00\x11messaging.content"
        + b"\x00\x011"
        + b"\x00\x06th_one"
        + b"\x00\x05msg_1"
        + b"\x00\x04body"
    )
    assert cipher.context("msg_1", crypto.BODY) == expected
    assert crypto._content_context("th_one", "msg_1", crypto.BODY) == expected
    # Sealed with the key's bytes and the schema's context, it opens with the cipher, and
    # the other way round.
    blob = keyring_module.seal(cipher.key, b"hello", expected)
    assert cipher.open("msg_1", crypto.BODY, blob) == b"hello"
    sealed = cipher.seal("msg_1", crypto.BODY, b"again")
    assert keyring_module.open_sealed(cipher.key, sealed, expected) == b"again"


def test_a_wrapped_key_copied_to_another_thread_does_not_unwrap(
    client: TestClient, world: World
) -> None:
    first = start_thread(client, world, "zeb")
    second = start_thread(client, world, "otto")
    with transaction(world.runtime.sessions) as db:
        a, b = db.get(Thread, first), db.get(Thread, second)
        assert a is not None and b is not None
        b.data_key_wrapped = a.data_key_wrapped
    response = client.get(f"/api/v1/messaging/threads/{second}", headers=world.app())
    assert response.status_code == 503
    assert bodies(client, world, first)  # the original row still opens


def test_rotate_with_rewrap_keeps_everything_readable_and_retires_the_old_kek(
    capsys: pytest.CaptureFixture[str],
    cli_env: Path,
    client: TestClient,
    world: World,
    settings: Settings,
) -> None:
    thread_id = start_thread(client, world, body="before rotation")
    client.post(
        f"/api/v1/messaging/threads/{thread_id}/attachments",
        params={"filename": "a.pdf"},
        content=b"%PDF-1.4 test",
        headers=world.app(),
    )
    old_kek = world.runtime.keyring.active_kek.kid
    with world.runtime.sessions() as db:
        rows_before = {m.id: m.body_encrypted for m in db.scalars(select(Message)).all()} | {
            a.id: a.content_encrypted for a in db.scalars(select(Attachment)).all()
        }

    status, out, _ = run(capsys, "keys", "rotate", "--rewrap")
    assert status == 0, out
    assert "re-wrapped 1 thread data key(s)" in out

    rotated = keyring_module.load(settings.effective_keyring_file)
    new_kek = rotated.active_kek.kid
    assert new_kek != old_kek
    with world.runtime.sessions() as db:
        thread = db.get(Thread, thread_id)
        assert thread is not None and thread.kek_id == new_kek
        rows_after = {m.id: m.body_encrypted for m in db.scalars(select(Message)).all()} | {
            a.id: a.content_encrypted for a in db.scalars(select(Attachment)).all()
        }
    assert rows_after == rows_before  # message rows untouched

    # The old KEK retired: a keyring holding only the new one still opens everything.
    retired = Keyring([rotated.active_kek], rotated.signing, rotated._pepper, development=True)
    runtime = Runtime(settings, world.runtime.engine, retired)
    with TestClient(create_app(runtime), raise_server_exceptions=False) as fresh:
        assert bodies(fresh, world, thread_id) == ["before rotation", ""]
        detail = fresh.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.app()).json()
        attachment_id = detail["messages"][1]["attachments"][0]["id"]
        download = fresh.get(
            f"/api/v1/messaging/threads/{thread_id}/attachments/{attachment_id}",
            headers=world.app(),
        )
        assert download.content == b"%PDF-1.4 test"
    assert keys.problems(runtime) == []


def test_without_rewrap_a_retired_kek_is_reported_and_answers_503_not_a_traceback(
    client: TestClient, world: World, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    thread_id = start_thread(client, world, body="kept secret")
    rotated = world.runtime.keyring.rotated()
    retired = Keyring([rotated.active_kek], rotated.signing, rotated._pepper, development=True)
    runtime = Runtime(settings, world.runtime.engine, retired)
    found = keys.problems(runtime)
    assert len(found) == 1 and world.runtime.keyring.active_kek.kid in found[0]
    with caplog.at_level(logging.INFO):
        keys.check_at_start(runtime)
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    with TestClient(create_app(runtime), raise_server_exceptions=False) as fresh:
        response = fresh.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.app())
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "Traceback" not in response.text and "kept secret" not in caplog.text


def test_a_wrong_kek_with_the_same_id_is_reported(
    client: TestClient, world: World, settings: Settings
) -> None:
    start_thread(client, world)
    real = world.runtime.keyring
    impostor = keyring_module.KeyEncryptionKey(
        real.active_kek.kid, b"\x01" * 32, real.active_kek.created
    )
    runtime = Runtime(
        settings,
        world.runtime.engine,
        Keyring([impostor], real.signing, real._pepper, development=True),
    )
    [problem] = keys.problems(runtime)
    assert "does not open" in problem


def test_check_keys_command(
    capsys: pytest.CaptureFixture[str], cli_env: Path, client: TestClient, world: World
) -> None:
    start_thread(client, world)
    status, out, _ = run(capsys, "messaging", "check-keys")
    assert status == 0 and "opens" in out
