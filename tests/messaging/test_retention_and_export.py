"""Retention (crypto-shred), legal hold, care-team commands, and the patient's export
(both backends)."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.cli import main
from carebridge.db import transaction
from messaging import crypto, retention
from messaging.models import CareTeam, CareTeamClient, Message, Thread

from .conftest import World, start_thread

PDF = b"%PDF-1.4\nexport me\n%%EOF\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def age(world: World, thread_id: str, days: int) -> None:
    with transaction(world.runtime.sessions) as db:
        db.execute(
            update(Thread)
            .where(Thread.id == thread_id)
            .values(last_message_at=datetime.now(UTC) - timedelta(days=days))
        )


def actions(world: World) -> list[tuple[str, str, str | None]]:
    with world.runtime.sessions() as db:
        return [
            (r.actor, r.action, r.target)
            for r in db.scalars(select(AuditRecord).order_by(AuditRecord.seq))
        ]


def test_expire_shreds_threads_past_retention_and_content_is_gone(
    capsys: pytest.CaptureFixture[str], cli_env: Path, client: TestClient, world: World
) -> None:
    old = start_thread(client, world, body="old news")
    recent = start_thread(client, world, body="fresh")
    age(world, old, 31)  # the team keeps threads 30 days
    with world.runtime.sessions() as db:
        message = db.scalars(select(Message).where(Message.thread_id == old)).one()
        thread = db.get(Thread, old)
        assert thread is not None
        key = crypto.cipher_for(world.runtime.keyring, thread).key

    status, out, _ = run(capsys, "messaging", "expire")
    assert status == 0 and "crypto-shredded 1 thread(s)" in out

    with world.runtime.sessions() as db:
        thread = db.get(Thread, old)
        assert thread is not None
        assert thread.data_key_wrapped is None and thread.shredded_at is not None
        with pytest.raises(crypto.ShreddedError):
            crypto.cipher_for(world.runtime.keyring, thread)
        # The tombstone's ciphertext is still there, and nothing this service holds opens it.
        assert db.get(Message, message.id) is not None
    assert crypto.ThreadCipher(old, key).open_text(message.id, crypto.BODY, message.body_encrypted)
    gone = client.get(f"/api/v1/messaging/threads/{old}", headers=world.patient("zeb"))
    assert gone.status_code == 410
    listed = client.get("/api/v1/messaging/threads", headers=world.patient("zeb")).json()
    assert [t["id"] for t in listed["threads"]] == [recent]
    assert ("operator", "messaging.thread.shred", f"thread:{old}") in actions(world)


def test_legal_hold_keeps_a_thread_past_retention_until_cleared(
    capsys: pytest.CaptureFixture[str], cli_env: Path, client: TestClient, world: World
) -> None:
    held = start_thread(client, world)
    age(world, held, 400)
    status, out, _ = run(
        capsys, "messaging", "legal-hold", "set", "--thread", held, "--reason", "case 2026-17"
    )
    assert status == 0, out
    assert retention.expire(world.runtime) == 0
    assert client.get(f"/api/v1/messaging/threads/{held}", headers=world.app()).status_code == 200

    status, _, err = run(
        capsys, "messaging", "legal-hold", "clear", "--thread", held, "--reason", ""
    )
    assert status == 1 and "reason" in err  # a reason is required
    status, out, _ = run(
        capsys, "messaging", "legal-hold", "clear", "--thread", held, "--reason", "case closed"
    )
    assert status == 0
    assert retention.expire(world.runtime) == 1
    log = actions(world)
    assert ("operator", "messaging.legal_hold.set", f"thread:{held}") in log
    assert ("operator", "messaging.legal_hold.clear", f"thread:{held}") in log


def test_legal_hold_by_patient_and_unknown_threads(
    capsys: pytest.CaptureFixture[str], cli_env: Path, client: TestClient, world: World
) -> None:
    start_thread(client, world, "zeb")
    start_thread(client, world, "zeb")
    status, out, _ = run(
        capsys,
        "messaging",
        "legal-hold",
        "set",
        "--patient",
        world.patients["zeb"],
        "--reason",
        "audit",
    )
    assert status == 0 and "2 thread(s)" in out
    status, _, err = run(
        capsys, "messaging", "legal-hold", "set", "--thread", "th_nope", "--reason", "x"
    )
    assert status == 1 and "no such thread" in err


def test_care_team_commands(
    capsys: pytest.CaptureFixture[str], cli_env: Path, world: World
) -> None:
    status, out, _ = run(
        capsys, "messaging", "care-teams", "create", "--name", "Eastside", "--retention-days", "90"
    )
    assert status == 0
    team_id = out.strip()
    assert team_id.startswith("ct_")
    assert run(capsys, "messaging", "care-teams", "add-client", team_id, "east-app")[0] == 0
    # A client acts for one team at most.
    status, _, err = run(capsys, "messaging", "care-teams", "add-client", world.team, "east-app")
    assert status == 1 and "already acts for" in err
    status, _, err = run(capsys, "messaging", "care-teams", "add-staff", team_id, "acc_nobody")
    assert status == 1 and "no account" in err
    status, out, _ = run(capsys, "messaging", "care-teams", "list")
    assert "Eastside" in out and "east-app" in out and "retention 90 days" in out
    with world.runtime.sessions() as db:
        team = db.get(CareTeam, team_id)
        assert team is not None and team.retention_days == 90
        assert db.get(CareTeamClient, "east-app") is not None
    assert ("operator", "messaging.care_team.create", f"care_team:{team_id}") in actions(world)


def test_default_retention_is_seven_years(world: World) -> None:
    from messaging import care_teams  # noqa: PLC0415

    team_id = care_teams.create(world.runtime, name="Default", retention_days=None, actor="t")
    with world.runtime.sessions() as db:
        team = db.get(CareTeam, team_id)
        assert team is not None and team.retention_days == 2555


def test_export_round_trip(client: TestClient, world: World) -> None:
    first = start_thread(client, world, subject="Results <b>", body="Line one\nLine <two>")
    client.post(
        f"/api/v1/messaging/threads/{first}/attachments",
        params={"filename": "lab <report>.pdf"},
        content=PDF,
        headers=world.patient("zeb"),
    )
    second = start_thread(client, world, subject="Appointment", body="Tuesday 10:00")
    start_thread(client, world, "otto", subject="Not zeb's", body="otto only")

    response = client.get("/api/v1/messaging/export", headers=world.patient("zeb"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"].startswith("attachment;")
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    document = json.loads(archive.read("threads.json"))
    # No global patient ID: the export may be fetched by a third-party app (invariant 2).
    assert "patient_id" not in document
    assert world.patients["zeb"] not in archive.read("threads.json").decode()
    by_id = {t["id"]: t for t in document["threads"]}
    assert set(by_id) == {first, second}
    assert by_id[first]["subject"] == "Results <b>"
    messages = by_id[first]["messages"]
    assert messages[0]["body"] == "Line one\nLine <two>"
    assert messages[0]["from"] == "care team"
    [attachment] = messages[1]["attachments"]
    assert attachment["filename"] == "lab <report>.pdf"
    assert archive.read(attachment["path"]) == PDF

    app_export = client.get("/api/v1/messaging/export", headers=world.app())
    assert app_export.status_code == 403


def test_an_operator_exports_for_a_patient_request(
    capsys: pytest.CaptureFixture[str],
    cli_env: Path,
    client: TestClient,
    world: World,
    tmp_path: Path,
) -> None:
    thread_id = start_thread(client, world, body="for the request")
    out = tmp_path / "export.zip"
    status, printed, _ = run(
        capsys, "messaging", "export", "--patient", world.patients["zeb"], "--out", str(out)
    )
    assert status == 0, printed
    assert out.stat().st_mode & 0o777 == 0o600
    document = json.loads(zipfile.ZipFile(out).read("threads.json"))
    assert document["threads"][0]["id"] == thread_id
    assert document["threads"][0]["messages"][0]["body"] == "for the request"
    target = f"patient:{world.patients['zeb']}"
    assert ("operator", "messaging.export", target) in actions(world)
    assert (
        run(capsys, "messaging", "export", "--patient", world.patients["zeb"], "--out", str(out))[0]
        == 1
    )


def test_the_worker_jobs_expire_and_check_keys(client: TestClient, world: World) -> None:
    from carebridge.worker import run_once  # noqa: PLC0415
    from messaging.jobs import JOBS  # noqa: PLC0415

    old = start_thread(client, world)
    age(world, old, 31)
    assert {job.name for job in JOBS} == {
        "messaging-key-check",
        "messaging-expire",
        "messaging-escalate",
    }
    for job in JOBS:
        assert run_once(world.runtime, job)
    with world.runtime.sessions() as db:
        thread = db.get(Thread, old)
        assert thread is not None and thread.shredded_at is not None
    assert ("worker", "messaging.thread.shred", f"thread:{old}") in actions(world)
