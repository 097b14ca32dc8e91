"""Bad input: oversized bodies and files, types from the content, hostile file names; and
no partial writes when anything is refused (both backends)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from carebridge.runtime import Runtime
from messaging import files
from messaging.api import AttachmentOut, MessageOut, ThreadDetail, ThreadOut
from messaging.models import Attachment, Message
from sms.models import Notification

from .conftest import World, start_thread

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 64


def counts(runtime: Runtime) -> tuple[int, int, int]:
    with runtime.sessions() as db:
        return (
            db.scalar(select(func.count()).select_from(Message)) or 0,
            db.scalar(select(func.count()).select_from(Attachment)) or 0,
            db.scalar(select(func.count()).select_from(Notification)) or 0,
        )


def upload(
    client: TestClient, world: World, thread_id: str, content: bytes, filename: str
) -> httpx.Response:
    return client.post(
        f"/api/v1/messaging/threads/{thread_id}/attachments",
        params={"filename": filename},
        content=content,
        headers={**world.patient("zeb"), "Content-Type": "application/octet-stream"},
    )


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(PNG, "image/png"), (PDF, "application/pdf"), (JPEG, "image/jpeg")],
)
def test_an_attachment_round_trips_with_its_detected_type(
    client: TestClient, world: World, content: bytes, content_type: str
) -> None:
    thread_id = start_thread(client, world)
    response = client.post(
        f"/api/v1/messaging/threads/{thread_id}/attachments",
        params={"filename": "scan"},
        content=content,
        # The claim is ignored: the bytes decide.
        headers={**world.patient("zeb"), "Content-Type": "text/html"},
    )
    assert response.status_code == 201, response.text
    [attachment] = response.json()["attachments"]
    assert attachment["content_type"] == content_type
    assert attachment["size"] == len(content)
    with world.runtime.sessions() as db:
        stored = db.get(Attachment, attachment["id"])
        assert stored is not None and content not in stored.content_encrypted
    download = client.get(
        f"/api/v1/messaging/threads/{thread_id}/attachments/{attachment['id']}",
        headers=world.app(),
    )
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["content-type"] == content_type
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-disposition"].startswith("attachment;")
    assert download.headers["content-security-policy"] == "sandbox; default-src 'none'"


def test_a_png_that_is_really_an_executable_is_refused_without_a_trace(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)
    before = counts(world.runtime)
    response = upload(client, world, thread_id, EXE, "holiday.png")
    assert response.status_code == 415
    assert counts(world.runtime) == before


def test_an_oversized_file_is_refused_before_anything_is_stored(
    client: TestClient, world: World, runtime: Runtime
) -> None:
    thread_id = start_thread(client, world)
    before = counts(world.runtime)
    too_big = PNG + b"\x00" * runtime.settings.attachment_max_bytes
    response = upload(client, world, thread_id, too_big, "big.png")
    assert response.status_code == 413
    assert counts(world.runtime) == before


def test_an_oversized_body_is_refused_and_nothing_is_written(
    client: TestClient, world: World, runtime: Runtime
) -> None:
    thread_id = start_thread(client, world)
    before = counts(world.runtime)
    limit = runtime.settings.message_max_chars
    response = client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "x" * (limit + 1)},
        headers=world.app(),
    )
    assert response.status_code == 413
    assert counts(world.runtime) == before
    exactly = client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "é" * limit},
        headers=world.app(),
    )
    assert exactly.status_code == 201
    created = client.post(
        "/api/v1/messaging/threads",
        json={"patient_id": world.patients["otto"], "subject": "s", "body": "y" * (limit + 1)},
        headers=world.app(),
    )
    assert created.status_code == 413


def test_an_empty_or_malformed_body_is_refused(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    url = f"/api/v1/messaging/threads/{thread_id}/messages"
    assert client.post(url, json={"body": "   "}, headers=world.app()).status_code == 400
    assert client.post(url, json={"text": "hi"}, headers=world.app()).status_code == 400
    not_json = client.post(
        url, content=b"body=hi", headers={**world.app(), "Content-Type": "text/plain"}
    )
    assert not_json.status_code == 415


def test_html_in_file_names_is_kept_as_text_and_sent_safely(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)
    # A line break (a header injection) is refused at the input boundary.
    assert upload(client, world, thread_id, PDF, 'a"\r\nX-Evil: 1.pdf').status_code == 400
    hostile = '../../<img src=x onerror=alert(1)>"X-Evil: 1.pdf'
    response = upload(client, world, thread_id, PDF, hostile)
    [attachment] = response.json()["attachments"]
    assert "/" not in attachment["filename"] and "\n" not in attachment["filename"]
    download = client.get(
        f"/api/v1/messaging/threads/{thread_id}/attachments/{attachment['id']}",
        headers=world.patient("zeb"),
    )
    disposition = download.headers["content-disposition"]
    assert "x-evil" not in {k.lower() for k in download.headers}
    assert "<" not in disposition.split("filename*=")[0]
    assert disposition.startswith('attachment; filename="')


def test_an_attachment_of_another_thread_is_not_found(client: TestClient, world: World) -> None:
    mine = start_thread(client, world, "zeb")
    theirs = start_thread(client, world, "otto")
    response = client.post(
        f"/api/v1/messaging/threads/{theirs}/attachments",
        params={"filename": "a.pdf"},
        content=PDF,
        headers=world.patient("otto"),
    )
    attachment_id = response.json()["attachments"][0]["id"]
    crossed = client.get(
        f"/api/v1/messaging/threads/{mine}/attachments/{attachment_id}",
        headers=world.patient("zeb"),
    )
    assert crossed.status_code == 404


@pytest.mark.parametrize(
    ("raw", "content_type", "expected"),
    [
        ("report.pdf", "application/pdf", "report.pdf"),
        ("report.exe", "application/pdf", "report.exe.pdf"),
        ("C:\\Users\\me\\x-ray.JPG", "image/jpeg", "x-ray.JPG"),
        ("", "image/png", "attachment.png"),
        ("a\u202egnp.exe", "image/png", "agnp.exe.png"),
        ("x" * 300 + ".pdf", "application/pdf", "x" * 116 + ".pdf"),
    ],
)
def test_file_names_are_cleaned(raw: str, content_type: str, expected: str) -> None:
    assert files.clean_filename(raw, content_type) == expected


def test_content_disposition_carries_an_ascii_fallback_and_the_exact_name() -> None:
    header = files.content_disposition('résumé "final".pdf')
    assert header == (
        'attachment; filename="r_sum_ _final_.pdf"; '
        "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf"
    )


def test_a_thread_read_has_exactly_the_documented_shape(client: TestClient, world: World) -> None:
    """The read is serialized straight from the views: it must stay ThreadDetail's shape
    (the OpenAPI document's), attachments included, and carry nothing more."""
    thread_id = start_thread(client, world)
    assert upload(client, world, thread_id, PNG, "scan.png").status_code == 201
    for headers in (world.app(), world.patient("zeb")):
        response = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=headers)
        assert response.status_code == 200
        detail = ThreadDetail.model_validate_json(response.content)
        body = response.json()
        assert set(body) == set(ThreadDetail.model_fields)
        assert set(body["thread"]) == set(ThreadOut.model_fields)
        for message in body["messages"]:
            assert set(message) == set(MessageOut.model_fields)
        [attachment] = detail.messages[1].attachments
        assert set(body["messages"][1]["attachments"][0]) == set(AttachmentOut.model_fields)
        assert (attachment.filename, attachment.content_type) == ("scan.png", "image/png")
