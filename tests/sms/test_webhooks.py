"""Twilio's webhooks: signatures first, then status callbacks, keywords, voice TwiML."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from sms import contacts, delivery, outbox, phone
from sms.backends import ConsoleSender
from sms.models import Notification, OptOut, Preferences, SendAttempt
from sms.twilio_client import TwilioSender
from tests.sms.helpers import (
    AUTH_TOKEN,
    INBOUND,
    PUBLIC,
    People,
    PreferClient,
    as_twilio_sends,
    client_for,
    post_signed,
    sign,
    verified_number,
)

NUMBER = "+12025550143"
SID = "SM" + "1" * 32
CALL_SID = "CA" + "2" * 32


@pytest.fixture
def app(runtime: Runtime, console: ConsoleSender) -> Iterator[TestClient]:
    with client_for(runtime) as client:
        client.app.state.sms_sender = console  # type: ignore[attr-defined]
        yield client


def sent_notification(runtime: Runtime, patient_id: str, sender: object) -> tuple[str, str]:
    with transaction(runtime.sessions) as db:
        ntf = outbox.enqueue(db, patient_id=patient_id, kind=outbox.NEW_MESSAGE, thread_id="thr_1")
    [out] = delivery.claim(runtime, utcnow(), 10)[1]
    delivery.send(runtime, sender, out)  # type: ignore[arg-type]
    return ntf, out.attempt_id


def state(runtime: Runtime, ntf: str) -> Notification:
    with runtime.sessions() as db:
        row = db.get(Notification, ntf)
        assert row is not None
        return row


def audit_count(runtime: Runtime) -> int:
    with runtime.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(AuditRecord)) or 0)


# Signatures


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "forged",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        sign(PUBLIC + "/api/twilio/messages/inbound", {"Body": "START", "From": NUMBER}),
    ],
)
def test_unsigned_or_wrongly_signed_stop_changes_nothing(
    runtime: Runtime, app: TestClient, people: People, signature: str
) -> None:
    # The last one is a valid signature of *other* parameters (START, not STOP).
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    before = audit_count(runtime)
    response = post_signed(
        app,
        "/api/twilio/messages/inbound",
        {"Body": "STOP", "From": NUMBER},
        signature=signature,
    )
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(OptOut)) == 0
        prefs = db.get(Preferences, people["zeb"].patient_id)
        assert prefs is not None and prefs.sms_enabled
    assert audit_count(runtime) == before


def test_a_signature_over_the_internal_url_is_refused_behind_the_proxy(
    runtime: Runtime, app: TestClient
) -> None:
    params = {"Body": "HELP", "From": NUMBER}
    wrong = sign("http://testserver/api/twilio/messages/inbound", params)
    response = post_signed(app, "/api/twilio/messages/inbound", params, signature=wrong)
    assert response.status_code == 403


def test_a_signature_with_another_token_is_refused(runtime: Runtime, app: TestClient) -> None:
    params = {"Body": "HELP", "From": NUMBER}
    url = PUBLIC + "/api/twilio/messages/inbound"
    forged = sign(url, params, token=AUTH_TOKEN + "x")
    assert (
        post_signed(app, "/api/twilio/messages/inbound", params, signature=forged).status_code
        == 403
    )


def test_a_signature_including_the_default_port_is_accepted(
    runtime: Runtime, app: TestClient
) -> None:
    params = as_twilio_sends(INBOUND, {"Body": "HELP", "From": NUMBER})
    with_port = sign("https://notify.example.org:443/api/twilio/messages/inbound", params)
    response = post_signed(app, INBOUND, params, signature=with_port, raw=True)
    assert response.status_code == 200


def test_webhooks_set_no_cookies(runtime: Runtime, app: TestClient) -> None:
    response = post_signed(app, "/api/twilio/messages/inbound", {"Body": "HELP", "From": NUMBER})
    assert "set-cookie" not in response.headers


# Inbound keywords


STOP_WORDS = ["STOP", "stop", "StopAll", "UNSUBSCRIBE", "cancel", "END", "quit", "REVOKE", "OPTOUT"]


def test_stop_words_turn_sms_off_and_list_the_number(
    runtime: Runtime, app: TestClient, people: People
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient, NUMBER)
    number_hash = phone.number_hash(runtime.keyring, NUMBER)
    for word in STOP_WORDS:
        with transaction(runtime.sessions) as db:
            prefs = db.get(Preferences, patient)
            assert prefs is not None
            prefs.sms_enabled = True
            listed = db.get(OptOut, number_hash)
            if listed is not None:
                db.delete(listed)
        response = post_signed(
            app, "/api/twilio/messages/inbound", {"Body": f" {word} ", "From": NUMBER}
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/xml")
        assert "<Message>" not in response.text
        with runtime.sessions() as db:
            prefs = db.get(Preferences, patient)
            assert prefs is not None and prefs.sms_enabled is False, word
            assert db.get(OptOut, number_hash) is not None, word
    with runtime.sessions() as db:
        records = db.scalars(select(AuditRecord).where(AuditRecord.action == "sms.optout")).all()
    assert len(records) == len(STOP_WORDS)
    for record in records:
        assert record.target and record.target.startswith("contact:cp_")
        assert NUMBER not in str(record.target)


def test_stop_then_a_notification_is_suppressed_as_opted_out(
    runtime: Runtime, app: TestClient, people: People, console: ConsoleSender
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient, NUMBER)
    post_signed(app, "/api/twilio/messages/inbound", {"Body": "STOP", "From": NUMBER})
    # The patient turns SMS back on in a way that keeps our list: simulate a stale row.
    with transaction(runtime.sessions) as db:
        prefs = db.get(Preferences, patient)
        assert prefs is not None
        prefs.sms_enabled = True
        db.add(outbox_row := _notification(patient))
    delivery.drain(runtime, console)
    assert state(runtime, outbox_row.id).reason == "opted_out"


def _notification(patient_id: str) -> Notification:
    return Notification(
        id="ntf_test_opted_out",
        patient_id=patient_id,
        kind=outbox.NEW_MESSAGE,
        thread_id="thr_1",
        created_at=utcnow(),
        state="pending",
        attempts=0,
    )


def test_start_restores_sms_only_after_an_earlier_opt_in(
    runtime: Runtime, app: TestClient, people: People
) -> None:
    opted_in, never = people["zeb"].patient_id, people["otto"].patient_id
    verified_number(runtime, opted_in, NUMBER)
    verified_number(runtime, never, "+12025550144", sms_enabled=False, voice_enabled=True)
    for number in (NUMBER, "+12025550144"):
        post_signed(app, "/api/twilio/messages/inbound", {"Body": "STOP", "From": number})
        post_signed(app, "/api/twilio/messages/inbound", {"Body": "unstop", "From": number})
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(OptOut)) == 0
        first = db.get(Preferences, opted_in)
        second = db.get(Preferences, never)
        assert first is not None and first.sms_enabled is True
        assert second is not None and second.sms_enabled is False


def test_help_answers_with_the_help_text(runtime: Runtime, app: TestClient) -> None:
    response = post_signed(app, "/api/twilio/messages/inbound", {"Body": "help", "From": NUMBER})
    assert "<Message>carebridge notifications. Reply STOP" in response.text
    assert "+15005550100" in response.text


def test_stop_from_an_unknown_number_is_listed_and_audited(
    runtime: Runtime, app: TestClient
) -> None:
    response = post_signed(
        app, "/api/twilio/messages/inbound", {"Body": "STOP", "From": "+447700900123"}
    )
    assert response.status_code == 200
    with runtime.sessions() as db:
        assert db.get(OptOut, phone.number_hash(runtime.keyring, "+447700900123")) is not None
        record = db.scalars(select(AuditRecord).where(AuditRecord.action == "sms.optout")).one()
        assert record.target == "contact:unknown"


def test_other_text_is_ignored_and_not_kept(runtime: Runtime, app: TestClient) -> None:
    before = audit_count(runtime)
    response = post_signed(
        app, "/api/twilio/messages/inbound", {"Body": "stop texting me please", "From": NUMBER}
    )
    assert response.status_code == 200
    assert "<Message>" not in response.text
    assert audit_count(runtime) == before


# Status callbacks


def test_status_callbacks_move_forward_only(
    runtime: Runtime, app: TestClient, people: People, console: ConsoleSender
) -> None:
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    ntf, attempt = sent_notification(runtime, people["zeb"].patient_id, console)
    path = f"/api/twilio/messages/{attempt}/status"
    for status in ("sent", "delivered", "sent"):  # the last one replayed late
        response = post_signed(app, path, {"MessageSid": SID, "MessageStatus": status})
        assert response.status_code == 204
    row = state(runtime, ntf)
    assert (row.state, row.delivery_status) == ("delivered", "delivered")


def test_undelivered_30006_landline_marks_the_number(
    runtime: Runtime, app: TestClient, people: People, console: ConsoleSender
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient, NUMBER)
    ntf, attempt = sent_notification(runtime, patient, console)
    response = post_signed(
        app,
        f"/api/twilio/messages/{attempt}/status",
        {"MessageSid": SID, "MessageStatus": "undelivered", "ErrorCode": "30006"},
    )
    assert response.status_code == 204
    with runtime.sessions() as db:
        contact = contacts.of_patient(db, patient)
        assert contact is not None and contact.sms_usable is False
    delivery.drain(runtime, console)
    assert state(runtime, ntf).reason == "number_unusable"


def test_a_callback_for_an_unknown_attempt_changes_nothing(
    runtime: Runtime, app: TestClient
) -> None:
    response = post_signed(
        app, f"/api/twilio/messages/at{'0' * 32}/status", {"MessageStatus": "delivered"}
    )
    assert response.status_code == 200
    response = post_signed(app, "/api/twilio/messages/nonsense/status", {"MessageStatus": "x"})
    assert response.status_code == 404


def test_a_late_callback_completes_an_attempt_the_worker_never_recorded(
    runtime: Runtime, app: TestClient, people: People
) -> None:
    # The worker recorded the attempt, called Twilio, and died before writing the SID.
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    with transaction(runtime.sessions) as db:
        ntf = outbox.enqueue(
            db, patient_id=people["zeb"].patient_id, kind=outbox.NEW_MESSAGE, thread_id="t"
        )
    [out] = delivery.claim(runtime, utcnow(), 10)[1]
    post_signed(
        app,
        f"/api/twilio/messages/{out.attempt_id}/status",
        {"MessageSid": SID, "MessageStatus": "sent"},
    )
    row = state(runtime, ntf)
    assert row.state == "sent"
    with runtime.sessions() as db:
        attempt = db.get(SendAttempt, out.attempt_id)
        assert attempt is not None and attempt.provider_sid == SID


# Voice


@pytest.fixture
def call(runtime: Runtime, people: People, twilio_sender: TwilioSender) -> str:
    verified_number(
        runtime, people["zeb"].patient_id, NUMBER, sms_enabled=False, voice_enabled=True
    )
    return sent_notification(runtime, people["zeb"].patient_id, twilio_sender)[1]


def test_the_call_holds_while_detection_listens(
    runtime: Runtime, app: TestClient, call: str
) -> None:
    response = post_signed(app, f"/api/twilio/calls/{call}/twiml", {"CallSid": CALL_SID})
    assert response.status_code == 200
    assert "<Pause" in response.text and "<Say" not in response.text


@pytest.mark.parametrize(
    "case",
    [
        ("human", False, True),
        ("machine_end_beep", True, True),
        ("machine_end_silence", True, True),
        ("machine_end_other", True, True),
        ("machine_end_beep", False, False),
        ("fax", True, False),
        ("unknown", True, False),
        ("machine_start", True, False),
    ],
)
def test_detection_decides_what_is_said(case: tuple[str, bool, bool]) -> None:
    from sms import webhooks  # noqa: PLC0415

    answered_by, voicemail, says = case
    twiml = webhooks.twiml_for(answered_by, voicemail, "carebridge", "+15005550100")
    assert ("<Say>" in twiml) is says
    assert "<Hangup" in twiml
    if says:
        assert "5 0 0, 5 5 5, 0 1 0 0" in twiml  # the callback number, digit by digit


def test_detection_updates_the_call_per_the_patients_voicemail_choice(
    runtime: Runtime,
    app: TestClient,
    call: str,
    twilio_sender: TwilioSender,
    prefer_client: PreferClient,
) -> None:
    app.app.state.sms_sender = twilio_sender  # type: ignore[attr-defined]
    with runtime.sessions() as db:
        attempt_row = db.get(SendAttempt, call)
        assert attempt_row is not None
        ntf_row = db.get(Notification, attempt_row.notification_id)
        assert ntf_row is not None
        patient = ntf_row.patient_id
    for answered_by, voicemail, says in [
        ("machine_end_beep", False, False),
        ("machine_end_beep", True, True),
        ("human", False, True),
    ]:
        with transaction(runtime.sessions) as db:
            prefs = db.get(Preferences, patient)
            assert prefs is not None
            prefs.voicemail_enabled = voicemail
        response = post_signed(
            app, f"/api/twilio/calls/{call}/amd", {"CallSid": CALL_SID, "AnsweredBy": answered_by}
        )
        assert response.status_code == 204
        update = prefer_client.requests[-1]
        assert update["url"].endswith(f"/Calls/{CALL_SID}.json")
        assert ("<Say>" in update["data"]["Twiml"]) is says
        with runtime.sessions() as db:
            attempt = db.get(SendAttempt, call)
            assert attempt is not None and attempt.answered_by == answered_by


def test_call_twiml_carries_no_phi(runtime: Runtime) -> None:
    from sms import texts  # noqa: PLC0415

    spoken = texts.voice_notice("carebridge", "+15005550100")
    assert spoken == (
        "Hello. This is carebridge. Please call us back at 5 0 0, 5 5 5, 0 1 0 0. "
        "Again, 5 0 0, 5 5 5, 0 1 0 0. Goodbye."
    )


def test_call_status_completed_is_delivered(runtime: Runtime, app: TestClient, call: str) -> None:
    post_signed(app, f"/api/twilio/calls/{call}/amd", {"CallSid": CALL_SID, "AnsweredBy": "human"})
    response = post_signed(
        app, f"/api/twilio/calls/{call}/status", {"CallSid": CALL_SID, "CallStatus": "completed"}
    )
    assert response.status_code == 204
    with runtime.sessions() as db:
        attempt = db.get(SendAttempt, call)
        assert attempt is not None
        row = db.get(Notification, attempt.notification_id)
        assert row is not None and row.state == "delivered"


def test_a_resend_after_a_silent_attempt_is_flagged_if_both_went_out(
    runtime: Runtime, app: TestClient, people: People, console: ConsoleSender
) -> None:
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    with transaction(runtime.sessions) as db:
        ntf = outbox.enqueue(
            db, patient_id=people["zeb"].patient_id, kind=outbox.NEW_MESSAGE, thread_id="t"
        )
    [first] = delivery.claim(runtime, utcnow(), 10)[1]  # then the worker died
    later = utcnow() + delivery.reconcile_window(runtime.settings)
    [second] = delivery.claim(runtime, later, 10)[1]
    delivery.send(runtime, console, second)
    assert state(runtime, ntf).attempt_id == second.attempt_id
    # The first one had reached Twilio after all: noticed, logged and audited.
    post_signed(
        app,
        f"/api/twilio/messages/{first.attempt_id}/status",
        {"MessageSid": SID, "MessageStatus": "sent"},
    )
    with runtime.sessions() as db:
        record = db.scalars(
            select(AuditRecord).where(AuditRecord.action == "sms.notification.duplicate")
        ).one()
    assert record.target == f"notification:{ntf}"


def test_a_late_callback_before_the_resend_is_adopted(
    runtime: Runtime, app: TestClient, people: People, console: ConsoleSender
) -> None:
    verified_number(runtime, people["zeb"].patient_id, NUMBER)
    with transaction(runtime.sessions) as db:
        ntf = outbox.enqueue(
            db, patient_id=people["zeb"].patient_id, kind=outbox.NEW_MESSAGE, thread_id="t"
        )
    [first] = delivery.claim(runtime, utcnow(), 10)[1]
    # A failed send of a replacement leaves the notification pending for a retry...
    later = utcnow() + delivery.reconcile_window(runtime.settings)
    [second] = delivery.claim(runtime, later, 10)[1]
    from sms.interfaces import ErrorKind  # noqa: PLC0415

    delivery.record_failure(runtime, second.attempt_id, ErrorKind.RETRY, 20429, later)
    assert state(runtime, ntf).state == "pending"
    # ...then the first attempt's callback shows it went out: no second send.
    post_signed(
        app,
        f"/api/twilio/messages/{first.attempt_id}/status",
        {"MessageSid": SID, "MessageStatus": "sent"},
    )
    row = state(runtime, ntf)
    assert (row.state, row.attempt_id) == ("sent", first.attempt_id)


def test_a_call_that_reached_only_a_fax_is_undelivered(
    runtime: Runtime, app: TestClient, call: str
) -> None:
    post_signed(app, f"/api/twilio/calls/{call}/amd", {"CallSid": CALL_SID, "AnsweredBy": "fax"})
    post_signed(
        app, f"/api/twilio/calls/{call}/status", {"CallSid": CALL_SID, "CallStatus": "completed"}
    )
    with runtime.sessions() as db:
        attempt = db.get(SendAttempt, call)
        assert attempt is not None
        row = db.get(Notification, attempt.notification_id)
        assert row is not None and row.state == "undelivered"
