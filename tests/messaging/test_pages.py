"""The patient's pages: inbox, thread, reply with attachment, download, export; text shown
as text; someone else's thread is the same 404 page as a missing one (both backends)."""

from __future__ import annotations

import io
import logging
import re
import zipfile

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from messaging.models import Attachment, Message
from tests.identity import factories

from .conftest import World, patient_browser, start_thread

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
XSS = "<script>alert('x')</script><img src=x onerror=alert(1)>"


def message_count(world: World) -> int:
    with world.runtime.sessions() as db:
        return db.scalar(select(func.count()).select_from(Message)) or 0


def test_pages_need_a_verified_patient(client: TestClient, world: World) -> None:
    assert client.get("/messages", follow_redirects=False).status_code in (303, 401)
    unverified = factories.account(world.runtime)
    factories.totp(world.runtime, unverified)
    factories.sign_in(client, world.runtime, unverified, level=2)
    response = client.get("/messages", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/verify?next=")


def test_inbox_thread_and_reply(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world, subject="Results", body="Hello Zeb\nsecond line")
    patient_browser(client, world, "zeb")
    inbox = client.get("/messages")
    assert inbox.status_code == 200
    assert "Results" in inbox.text and "1 unread message" in inbox.text
    assert f'href="/messages/{thread_id}"' in inbox.text

    page = client.get(f"/messages/{thread_id}")
    assert page.status_code == 200
    assert "Hello Zeb<br>second line" in page.text
    assert "1 unread" not in client.get("/messages").text  # viewing marks read

    sent = client.post(
        f"/messages/{thread_id}/reply",
        data={"csrf_token": factories.csrf(page.text), "body": "Thanks, doctor"},
        files={"file": ("", b"", "application/octet-stream")},
        follow_redirects=False,
    )
    assert sent.status_code == 303
    assert sent.headers["location"].startswith(f"/messages/{thread_id}?sent=1")
    after = client.get(sent.headers["location"])
    assert "Thanks, doctor" in after.text and "Your message was sent." in after.text


def test_html_in_bodies_subjects_and_file_names_is_shown_as_text(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world, subject=XSS, body=XSS)
    patient_browser(client, world, "zeb")
    page = client.get(f"/messages/{thread_id}")
    uploaded = client.post(
        f"/messages/{thread_id}/reply",
        data={"csrf_token": factories.csrf(page.text), "body": XSS},
        files={"file": (f"{XSS}.png", PNG, "image/png")},
    )
    assert uploaded.status_code == 200
    for html in (uploaded.text, client.get("/messages").text):
        assert "<script>alert" not in html
        assert "<img src=x" not in html
        assert "&lt;script&gt;" in html


def test_reply_with_an_attachment_and_download(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    patient_browser(client, world, "zeb")
    page = client.get(f"/messages/{thread_id}")
    sent = client.post(
        f"/messages/{thread_id}/reply",
        data={"csrf_token": factories.csrf(page.text), "body": "Here is the scan"},
        files={"file": ("scan.png", PNG, "image/png")},
    )
    assert sent.status_code == 200
    with world.runtime.sessions() as db:
        attachment = db.scalars(select(Attachment)).one()
    assert f"/messages/{thread_id}/attachments/{attachment.id}" in sent.text
    download = client.get(f"/messages/{thread_id}/attachments/{attachment.id}")
    assert download.content == PNG
    assert download.headers["content-type"] == "image/png"
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-disposition"].startswith('attachment; filename="scan.png"')


def test_a_bad_attachment_shows_the_form_again_and_writes_nothing(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world)
    patient_browser(client, world, "zeb")
    page = client.get(f"/messages/{thread_id}")
    before = message_count(world)
    response = client.post(
        f"/messages/{thread_id}/reply",
        data={"csrf_token": factories.csrf(page.text), "body": "my draft"},
        files={"file": ("holiday.png", b"MZ\x90\x00" + b"\x00" * 64, "image/png")},
    )
    assert response.status_code == 415
    assert "Only PDF, PNG, JPEG files" in response.text
    assert "my draft" in response.text  # the text is kept for another try
    assert message_count(world) == before


def test_an_oversized_upload_is_refused_before_it_is_read(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    patient_browser(client, world, "zeb")
    page = client.get(f"/messages/{thread_id}")
    before = message_count(world)
    big = PNG + b"\x00" * world.runtime.settings.attachment_max_bytes * 2
    response = client.post(
        f"/messages/{thread_id}/reply",
        data={"csrf_token": factories.csrf(page.text), "body": "big"},
        files={"file": ("big.png", big, "image/png")},
    )
    assert response.status_code == 413
    assert message_count(world) == before


def test_a_reply_without_the_csrf_token_is_refused(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    patient_browser(client, world, "zeb")
    before = message_count(world)
    response = client.post(f"/messages/{thread_id}/reply", data={"body": "forged"})
    assert response.status_code == 403
    assert message_count(world) == before


def test_another_patients_thread_is_the_same_404_page_as_a_missing_one(
    client: TestClient, world: World
) -> None:
    thread_id = start_thread(client, world, "zeb", subject="Zeb's secret subject")
    own = start_thread(client, world, "otto")
    patient_browser(client, world, "otto")
    missing_id = "th_AAAAAAAAAAAAAAAAAAAAAA"
    theirs = client.get(f"/messages/{thread_id}")
    missing = client.get(f"/messages/{missing_id}")
    assert theirs.status_code == missing.status_code == 404

    def normalised(html: str) -> str:
        return re.sub(r"[0-9a-f]{32}", "REQUEST", html)  # the request ID differs

    assert normalised(theirs.text) == normalised(missing.text)
    assert "secret subject" not in theirs.text
    token = factories.csrf(client.get(f"/messages/{own}").text)
    before = message_count(world)
    forged = client.post(f"/messages/{thread_id}/reply", data={"csrf_token": token, "body": "x"})
    assert forged.status_code == 404
    assert message_count(world) == before
    download = client.get(f"/messages/{thread_id}/attachments/att_AAAAAAAAAAAAAAAAAAAAAA")
    assert download.status_code == 404


def test_export_from_the_page(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world, body="keep a copy")
    patient_browser(client, world, "zeb")
    inbox = client.get("/messages")
    assert 'href="/messages/export"' in inbox.text
    # Every message at once needs a step-up: a second factor proved in the last minutes.
    refused = client.get("/messages/export", follow_redirects=False)
    assert refused.status_code == 303
    assert refused.headers["location"] == "/reauth?next=%2Fmessages%2Fexport"
    factories.sign_in(client, world.runtime, world.accounts["zeb"], level=2, stepped_up=True)
    response = client.get("/messages/export")
    assert response.status_code == 200
    document = zipfile.ZipFile(io.BytesIO(response.content)).read("threads.json")
    assert thread_id.encode() in document and b"keep a copy" in document


def test_no_message_text_reaches_the_logs(
    client: TestClient, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    marker = "Zanzibar-Quokka-Lemonade"
    with caplog.at_level(logging.DEBUG):
        thread_id = start_thread(client, world, subject=marker, body=marker)
        patient_browser(client, world, "zeb")
        page = client.get(f"/messages/{thread_id}")
        client.post(
            f"/messages/{thread_id}/reply",
            data={"csrf_token": factories.csrf(page.text), "body": marker},
            files={"file": (f"{marker}.png", PNG, "image/png")},
        )
        client.post(
            f"/api/v1/messaging/threads/{thread_id}/messages",
            json={"body": marker * 10_000},
            headers=world.app(),
        )
        client.get("/api/v1/messaging/export", headers=world.patient("zeb"))
    assert caplog.records  # the requests were logged
    assert marker not in caplog.text


def test_an_empty_reply_shows_the_form_again(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    patient_browser(client, world, "zeb")
    page = client.get(f"/messages/{thread_id}")
    before = message_count(world)
    response = client.post(
        f"/messages/{thread_id}/reply",
        data={"csrf_token": factories.csrf(page.text), "body": "   "},
        files={"file": ("", b"", "application/octet-stream")},
    )
    assert response.status_code == 400
    assert "Write a message first." in response.text
    assert message_count(world) == before


def test_the_inbox_pages_by_cursor(
    client: TestClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from messaging import pages  # noqa: PLC0415

    made = [start_thread(client, world, subject=f"Subject {n}") for n in range(3)]
    patient_browser(client, world, "zeb")
    monkeypatch.setattr(pages, "_PAGE", 2)
    first = client.get("/messages")
    match = re.search(r'href="/messages\?cursor=([^"]+)"', first.text)
    assert match, "no link to older conversations"
    second = client.get(f"/messages?cursor={match.group(1)}")
    listed = re.findall(r'href="/messages/(th_[A-Za-z0-9_-]{22})"', first.text + second.text)
    assert sorted(listed) == sorted(made)
