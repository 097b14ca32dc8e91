"""The insecure-channel consent means something: notices name the care team only under the
patient's consent to the text in force, read when the notice goes (Prism for Twilio,
aiosmtpd for e-mail, the real care team and thread through messaging's API; SQLite and
PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from carebridge.utc import utcnow
from carebridge.wiring import MessagingTeamNames
from sms import consent, delivery, preferences, texts
from sms.models import Notification, Preferences, SendAttempt
from sms.preferences import PreferenceChanges, PreferenceError
from sms.twilio_client import TwilioSender
from tests.identity import factories
from tests.identity.reset_mail import SmtpMailbox
from tests.messaging.conftest import World, build_world, start_thread
from tests.sms.helpers import (
    SMS_LINK,
    PreferClient,
    post_signed,
    twilio_settings,
    verified_number,
)
from tests.sms.test_delivery_merging import give_verified_address
from tests.smtp_server import SmtpServer

TEAM = "Northside clinic"  # the world's care team
SUBJECT, BODY = "Your biopsy results", "The biopsy shows no cancer."
PAGE = "/account/notifications"
API = "/api/v1/notifications/preferences"
CALL_SID = "CA" + "c" * 32


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # An organization allowing several notices a day: each test sends a few.
    base = Settings(data_dir=tmp_path / "data", database_url=database_url)
    return twilio_settings(base, "http://127.0.0.1:9", notify_daily_cap=10, notify_weekly_cap=50)


@pytest.fixture
def world(runtime: Runtime, tmp_path: Path) -> World:
    return build_world(runtime, tmp_path)


def choose(runtime: Runtime, patient_id: str, team_name: bool, version: str | None) -> None:
    with transaction(runtime.sessions) as db:
        prefs = db.get(Preferences, patient_id)
        assert prefs is not None
        consent.choose(
            db,
            prefs,
            team_name=team_name,
            version=version,
            actor="test",
            request_id=None,
            now=utcnow(),
        )


def given(runtime: Runtime, patient_id: str) -> None:
    choose(runtime, patient_id, True, texts.CONSENT_VERSION)


def drain(runtime: Runtime, sender: TwilioSender) -> None:
    delivery.drain(runtime, sender, clock=utcnow, team_names=MessagingTeamNames())


def sms_texts(prefer_client: PreferClient) -> list[str]:
    return [
        r["data"]["Body"] for r in prefer_client.requests if r["url"].endswith("/Messages.json")
    ]


def post(client: TestClient, world: World) -> str:
    return start_thread(client, world, subject=SUBJECT, body=BODY)


def test_a_notice_is_generic_by_default(
    runtime: Runtime,
    world: World,
    client: TestClient,
    twilio_sender: TwilioSender,
    prefer_client: PreferClient,
) -> None:
    verified_number(runtime, world.patients["zeb"])
    post(client, world)
    drain(runtime, twilio_sender)
    [sms] = sms_texts(prefer_client)
    assert SMS_LINK.search(sms)
    assert TEAM not in sms
    assert "biopsy" not in sms.lower()


def test_the_team_is_named_only_under_consent_to_the_text_in_force(
    runtime: Runtime,
    world: World,
    client: TestClient,
    twilio_sender: TwilioSender,
    prefer_client: PreferClient,
) -> None:
    zeb = world.patients["zeb"]
    verified_number(runtime, zeb, daily_cap=5)
    given(runtime, zeb)
    post(client, world)
    drain(runtime, twilio_sender)
    [sms] = sms_texts(prefer_client)
    assert f"from {TEAM}." in sms
    assert SMS_LINK.search(sms)
    assert len(sms) <= texts.SMS_LIMIT


def test_a_consent_to_an_older_text_is_asked_again_before_it_applies(
    runtime: Runtime,
    world: World,
    client: TestClient,
    twilio_sender: TwilioSender,
    prefer_client: PreferClient,
) -> None:
    zeb = world.patients["zeb"]
    verified_number(runtime, zeb, daily_cap=5)
    old = next(version for version in texts.CONSENT_TEXTS if version != texts.CONSENT_VERSION)
    with transaction(runtime.sessions) as db:  # given under the earlier text
        prefs = db.get(Preferences, zeb)
        assert prefs is not None
        prefs.insecure_consent, prefs.insecure_consent_version = True, old
        prefs.insecure_consent_at = utcnow() - timedelta(days=30)
    post(client, world)
    drain(runtime, twilio_sender)
    assert TEAM not in sms_texts(prefer_client)[-1]
    # The page shows the new text and asks; the API says so too.
    factories.totp(runtime, world.accounts["zeb"])
    factories.sign_in(client, runtime, world.accounts["zeb"], level=2)
    page = client.get(PAGE).text
    assert "The wording of this consent has changed" in page
    assert "anyone who sees my phone" in page
    # Saving other settings keeps the old consent, still not applied.
    form = page_form(client, notice_level="team_name", daily_cap="4")
    assert client.post(f"{PAGE}/preferences", data=form).status_code in (200, 303)
    post(client, world)
    drain(runtime, twilio_sender)
    assert TEAM not in sms_texts(prefer_client)[-1]
    # Agreeing to the text shown renews it: from then on the team is named.
    form = page_form(
        client, notice_level="team_name", insecure_consent_version=texts.CONSENT_VERSION
    )
    response = client.post(f"{PAGE}/preferences", data=form, follow_redirects=False)
    assert response.status_code == 303
    assert "The wording of this consent has changed" not in client.get(PAGE).text
    post(client, world)
    drain(runtime, twilio_sender)
    assert f"from {TEAM}" in sms_texts(prefer_client)[-1]
    assert history(runtime, zeb) == [("changed", "team_name", texts.CONSENT_VERSION)]


def page_form(client: TestClient, **values: str) -> dict[str, str]:
    """The preferences form as the page renders it, with ``values`` changed."""
    page = client.get(PAGE).text
    form = {
        "csrf_token": factories.csrf(page),
        "sms_enabled": "on",
        "time_zone": "UTC",
        "quiet_start": "00:00",
        "quiet_end": "00:00",
        "daily_cap": "5",
        "weekly_cap": "3",
    }
    form.update(values)
    return form


def history(runtime: Runtime, patient_id: str) -> list[tuple[str, str, str]]:
    """The consent's history in the audit log: (what, level, version), oldest first."""
    with runtime.sessions() as db:
        records = db.scalars(
            select(AuditRecord)
            .where(AuditRecord.action.like("sms.consent.%"))
            .order_by(AuditRecord.seq)
        ).all()
    found = []
    for record in records:
        assert record.target is not None and record.at is not None
        patient, level, version = record.target.split(" ")
        if patient == f"patient:{patient_id}":
            found.append(
                (
                    record.action.removeprefix("sms.consent."),
                    level.removeprefix("level:"),
                    version.removeprefix("version:"),
                )
            )
    return found


def test_consent_to_an_old_or_unshown_text_version_is_refused(
    runtime: Runtime, world: World, client: TestClient
) -> None:
    zeb = world.patients["zeb"]
    verified_number(runtime, zeb)
    factories.totp(runtime, world.accounts["zeb"])
    token = factories.session(runtime, world.accounts["zeb"], level=2)
    headers = {"Authorization": f"Bearer {token}"}
    body: dict[str, Any] = {
        "sms_enabled": True,
        "time_zone": "UTC",
        "quiet_start": "00:00",
        "quiet_end": "00:00",
        "daily_cap": 1,
        "weekly_cap": 3,
        "insecure_consent": True,
    }
    old = next(version for version in texts.CONSENT_TEXTS if version != texts.CONSENT_VERSION)
    for version in (None, old, "9999-01-01"):
        response = client.put(
            API, json={**body, "insecure_consent_version": version}, headers=headers
        )
        assert response.status_code == 409, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"][0]["field"] == "insecure_consent"
    assert client.get(API, headers=headers).json()["notice_level"] == "generic"
    assert history(runtime, zeb) == []
    response = client.put(
        API, json={**body, "insecure_consent_version": texts.CONSENT_VERSION}, headers=headers
    )
    assert response.status_code == 200
    assert response.json()["notice_level"] == "team_name"
    assert response.json()["consent_needs_renewal"] is False


def test_withdrawing_takes_effect_for_a_notice_already_queued_and_keeps_the_history(
    runtime: Runtime,
    world: World,
    client: TestClient,
    twilio_sender: TwilioSender,
    prefer_client: PreferClient,
) -> None:
    zeb = world.patients["zeb"]
    verified_number(runtime, zeb, daily_cap=5)
    given(runtime, zeb)
    post(client, world)  # queued while the consent held
    choose(runtime, zeb, False, None)  # withdrawn before the worker got to it
    drain(runtime, twilio_sender)
    [sms] = sms_texts(prefer_client)
    assert TEAM not in sms
    given(runtime, zeb)
    assert history(runtime, zeb) == [
        ("given", "team_name", texts.CONSENT_VERSION),
        ("withdrawn", "generic", texts.CONSENT_VERSION),
        ("given", "team_name", texts.CONSENT_VERSION),
    ]


def test_a_consent_level_change_racing_a_notification_is_honoured(
    runtime: Runtime,
    world: World,
    client: TestClient,
    twilio_sender: TwilioSender,
    prefer_client: PreferClient,
) -> None:
    """The withdrawal holds the preferences row when the worker's claim begins: the claim
    waits for it (PostgreSQL's row lock, SQLite's write lock) and renders generic."""
    zeb = world.patients["zeb"]
    verified_number(runtime, zeb, daily_cap=5)
    given(runtime, zeb)
    post(client, world)
    held, release = threading.Event(), threading.Event()

    def withdraw() -> None:
        with transaction(runtime.sessions) as db:
            prefs = db.get(Preferences, zeb)
            assert prefs is not None
            consent.choose(
                db, prefs, team_name=False, version=None, actor="t", request_id=None, now=utcnow()
            )
            db.flush()  # the row is written (and locked) now
            held.set()
            release.wait(10)

    changer = threading.Thread(target=withdraw)
    changer.start()
    assert held.wait(10)
    worker = threading.Thread(target=drain, args=(runtime, twilio_sender))
    worker.start()
    worker.join(0.5)
    assert worker.is_alive()  # waiting for the change to commit or roll back
    release.set()
    changer.join(10)
    worker.join(30)
    [sms] = sms_texts(prefer_client)
    assert TEAM not in sms
    assert SMS_LINK.search(sms)


def test_an_email_notice_names_the_team_only_under_consent(
    runtime: Runtime,
    world: World,
    client: TestClient,
    twilio_sender: TwilioSender,
    smtp_server: SmtpServer,
) -> None:
    zeb = world.patients["zeb"]
    give_verified_address(runtime, world.accounts["zeb"], "zeb@example.org")
    preferences.update(
        runtime,
        patient_id=zeb,
        actor="test",
        changes=PreferenceChanges(
            email_enabled=True,
            time_zone="UTC",
            quiet_start="00:00",
            quiet_end="00:00",
            daily_cap=5,
            weekly_cap=10,
        ),
        request_id=None,
    )
    post(client, world)
    drain(runtime, twilio_sender)
    given(runtime, zeb)
    post(client, world)
    drain(runtime, twilio_sender)
    generic, named = SmtpMailbox(smtp_server).collect(runtime)
    assert TEAM not in generic.subject + generic.text
    assert f"from {TEAM}" in named.subject
    for sent in (generic, named):
        assert SMS_LINK.search(sent.text)
        assert "biopsy" not in (sent.subject + sent.text).lower()


def call_for_notice(runtime: Runtime, world: World, client: TestClient) -> str:
    """A notice of a new message in the world's thread, claimed: the call's attempt."""
    post(client, world)
    [out] = delivery.claim(runtime, utcnow(), 10, MessagingTeamNames())[1]
    return out.attempt_id


def test_a_call_names_the_team_only_if_the_consent_holds_when_it_is_answered(
    runtime: Runtime,
    world: World,
    client: TestClient,
    twilio_sender: TwilioSender,
    prefer_client: PreferClient,
) -> None:
    client.app.state.sms_sender = twilio_sender  # type: ignore[attr-defined]
    zeb = world.patients["zeb"]
    verified_number(runtime, zeb, sms_enabled=False, voice_enabled=True, daily_cap=5)
    given(runtime, zeb)
    attempt = call_for_notice(runtime, world, client)
    amd = f"/api/twilio/calls/{attempt}/amd"
    assert post_signed(client, amd, {"CallSid": CALL_SID, "AnsweredBy": "human"}).status_code == 204
    spoken = prefer_client.requests[-1]["data"]["Twiml"]
    assert TEAM in spoken
    assert "biopsy" not in spoken.lower()
    choose(runtime, zeb, False, None)  # withdrawn while the phone rang
    post_signed(client, amd, {"CallSid": CALL_SID, "AnsweredBy": "human"})
    spoken = prefer_client.requests[-1]["data"]["Twiml"]
    assert "<Say>" in spoken
    assert TEAM not in spoken


def test_message_content_never_leaves_by_sms_voice_or_email(  # noqa: PLR0917  (fixtures)
    runtime: Runtime,
    world: World,
    client: TestClient,
    twilio_sender: TwilioSender,
    prefer_client: PreferClient,
    smtp_server: SmtpServer,
) -> None:
    """At the level that says the most: the team's name, never the subject or the body."""
    client.app.state.sms_sender = twilio_sender  # type: ignore[attr-defined]
    zeb = world.patients["zeb"]
    give_verified_address(runtime, world.accounts["zeb"], "zeb@example.org")
    verified_number(runtime, zeb, daily_cap=10, weekly_cap=50)
    given(runtime, zeb)
    outgoing: list[str] = []
    for channels in ({"sms_enabled": True}, {"voice_enabled": True}, {"email_enabled": True}):
        with transaction(runtime.sessions) as db:
            prefs = db.get(Preferences, zeb)
            assert prefs is not None
            prefs.sms_enabled = prefs.voice_enabled = prefs.email_enabled = False
            for name, value in channels.items():
                setattr(prefs, name, value)
        post(client, world)
        taken, sends = delivery.claim(runtime, utcnow(), 10, MessagingTeamNames())
        assert taken == 1
        for out in sends:
            delivery.send(runtime, twilio_sender, out)
            if out.channel == "voice":
                amd = f"/api/twilio/calls/{out.attempt_id}/amd"
                post_signed(client, amd, {"CallSid": CALL_SID, "AnsweredBy": "machine_end_beep"})
                post_signed(client, amd, {"CallSid": CALL_SID, "AnsweredBy": "human"})
    outgoing += [str(r["data"]) for r in prefer_client.requests]
    outgoing += [m.subject + m.text + m.html for m in SmtpMailbox(smtp_server).collect(runtime)]
    assert len(outgoing) >= 4  # the SMS, the call, its spoken notice, the e-mail
    joined = "\n".join(outgoing).lower()
    assert TEAM.lower() in joined
    for word in ("biopsy", "cancer", "results"):
        assert word not in joined
    with runtime.sessions() as db:
        states = set(db.scalars(select(Notification.state)))
        assert db.scalars(select(SendAttempt)).first() is not None
    assert "failed" not in states


def test_a_choice_the_patient_cannot_make_changes_nothing(runtime: Runtime, world: World) -> None:
    zeb = world.patients["zeb"]
    verified_number(runtime, zeb)
    with pytest.raises(PreferenceError) as refused:
        preferences.update(
            runtime,
            patient_id=zeb,
            actor="test",
            changes=PreferenceChanges(
                sms_enabled=True,
                time_zone="UTC",
                quiet_start="00:00",
                quiet_end="00:00",
                daily_cap=1,
                weekly_cap=3,
                insecure_consent=True,
            ),
            request_id=None,
        )
    assert refused.value.field == "insecure_consent"
    with runtime.sessions() as db:
        prefs = db.get(Preferences, zeb)
        assert prefs is not None and consent.in_force(prefs) is consent.Level.GENERIC
