"""A message's subject and body may hold tabs and line breaks, and nothing else that is a
control character; a file's contents are bytes, its name is text (issue 17, finding 4)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.identity import factories
from tests.logcapture import captured_log

from .conftest import World, patient_browser, start_thread

MARK = "crafted5k"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def test_subject_and_body_keep_tabs_and_line_breaks(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world, subject="Lab\tresults", body="Line one\r\nline\ttwo")
    reply = client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "Thanks\n\tZeb"},
        headers=world.patient("zeb"),
    )
    assert reply.status_code == 201, reply.text
    detail = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.patient("zeb"))
    assert detail.json()["thread"]["subject"] == "Lab\tresults"
    bodies = [m["body"] for m in detail.json()["messages"]]
    assert "Thanks\n\tZeb" in bodies


@pytest.mark.parametrize("character", ["\x00", "\x1b", "\x7f", "\x85", "\x0b"])
@pytest.mark.parametrize("field", ["subject", "body", "patient_id"])
def test_control_characters_in_a_new_thread_are_refused(
    client: TestClient, world: World, character: str, field: str
) -> None:
    payload = {"patient_id": world.patients["zeb"], "subject": "Results", "body": "Hello"}
    payload[field] = MARK + character
    with captured_log() as log:
        response = client.post("/api/v1/messaging/threads", json=payload, headers=world.app())
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert MARK not in response.text and MARK not in log.getvalue()
    assert "Traceback" not in log.getvalue()
    listed = client.get("/api/v1/messaging/threads", headers=world.app())
    assert listed.json()["threads"] == []  # nothing was written


def test_nul_in_a_reply_on_the_page_is_refused_and_line_breaks_are_kept(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)
    patient_browser(client, world, "zeb")
    page = client.get(f"/messages/{thread_id}")
    token = factories.csrf(page.text)
    refused = client.post(
        f"/messages/{thread_id}/reply",
        data={"csrf_token": token, "body": f"{MARK}\x00"},
        files={"file": ("", b"", "application/octet-stream")},
        follow_redirects=False,
    )
    assert refused.status_code == 400
    assert MARK not in refused.text
    kept = client.post(
        f"/messages/{thread_id}/reply",
        data={"csrf_token": token, "body": "First line\r\n\tsecond line"},
        files={"file": ("", b"", "application/octet-stream")},
        follow_redirects=False,
    )
    assert kept.status_code == 303
    detail = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.patient("zeb"))
    assert [m["body"] for m in detail.json()["messages"]][-1] == "First line\n\tsecond line"


def test_a_file_name_is_text_and_its_contents_are_bytes(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    patient_browser(client, world, "zeb")
    page = client.get(f"/messages/{thread_id}")
    token = factories.csrf(page.text)
    named = client.post(
        f"/messages/{thread_id}/reply",
        data={"csrf_token": token, "body": "scan"},
        files={"file": (f"{MARK}\x1b.png", PNG, "image/png")},
        follow_redirects=False,
    )
    assert named.status_code == 400
    # The contents hold NULs and control bytes, as an image does: accepted.
    uploaded = client.post(
        f"/messages/{thread_id}/reply",
        data={"csrf_token": token, "body": "scan"},
        files={"file": ("scan.png", PNG, "image/png")},
        follow_redirects=False,
    )
    assert uploaded.status_code == 303
    api = client.post(
        f"/api/v1/messaging/threads/{thread_id}/attachments?filename={MARK}%00.png",
        content=PNG,
        headers={**world.app(), "Content-Type": "application/octet-stream"},
    )
    assert api.status_code == 400 and MARK not in api.text
