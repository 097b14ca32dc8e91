"""The outbox worker against Prism serving Twilio's API, through the real twilio library."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from sqlalchemy import select

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from sms import contacts, delivery, outbox
from sms.backends import ConsoleSender
from sms.interfaces import ErrorKind, Sender
from sms.models import ContactPoint, Notification, OptOut, Preferences, SendAttempt
from sms.twilio_client import TwilioSender
from tests.sms.helpers import (
    SMS_LINK,
    People,
    PreferClient,
    Prism,
    twilio_settings,
    verified_number,
)

MESSAGES = "/Messages.json"
CALLS = "/Calls.json"


def enqueue(runtime: Runtime, patient_id: str, thread_id: str = "thr_abc") -> str:
    with transaction(runtime.sessions) as db:
        return outbox.enqueue(
            db, patient_id=patient_id, kind=outbox.NEW_MESSAGE, thread_id=thread_id
        )


def notification(runtime: Runtime, notification_id: str) -> Notification:
    with runtime.sessions() as db:
        row = db.get(Notification, notification_id)
        assert row is not None
        return row


def attempts(runtime: Runtime, notification_id: str) -> list[SendAttempt]:
    with runtime.sessions() as db:
        query = select(SendAttempt).where(SendAttempt.notification_id == notification_id)
        return list(db.scalars(query.order_by(SendAttempt.started_at)))


def drain(runtime: Runtime, sender: Sender, at: datetime | None = None) -> int:
    clock: Callable[[], datetime] = (lambda: at) if at else utcnow  # type: ignore[assignment,return-value]
    return delivery.drain(runtime, sender, clock=clock)


def test_a_new_message_is_texted_through_twilio(
    runtime: Runtime, people: People, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    verified_number(runtime, people["zeb"].patient_id)
    ntf = enqueue(runtime, people["zeb"].patient_id, "thr_123")
    assert drain(runtime, twilio_sender) == 1
    row = notification(runtime, ntf)
    assert (row.state, row.decision, row.reason, row.channel) == ("sent", "send", "allowed", "sms")
    [attempt] = attempts(runtime, ntf)
    assert attempt.status == "accepted"
    assert attempt.provider_sid and attempt.provider_sid.startswith("SM")
    [request] = [r for r in prefer_client.requests if r["url"].endswith(MESSAGES)]
    data = request["data"]
    assert data["To"] == "+12025550143"
    assert data["From"] == "+15005550006"
    assert data["StatusCallback"].endswith(f"/api/twilio/messages/{attempt.id}/status")
    body = data["Body"]
    assert len(body) <= 160
    assert body.startswith("carebridge: You have a new secure message.")
    assert SMS_LINK.search(body)
    assert "STOP" in body


def test_a_messaging_service_sends_without_a_from_number(
    runtime: Runtime, people: People, prism: Prism, prefer_client: PreferClient
) -> None:
    settings = twilio_settings(
        runtime.settings,
        prism.url,
        twilio_from_number="",
        twilio_messaging_service_sid="MG" + "ab" * 16,
    )
    sender = TwilioSender(settings, http_client=prefer_client)
    verified_number(runtime, people["zeb"].patient_id)
    ntf = enqueue(runtime, people["zeb"].patient_id)
    drain(runtime, sender)
    assert notification(runtime, ntf).state == "sent"
    data = prefer_client.requests[-1]["data"]
    assert data["MessagingServiceSid"] == "MG" + "ab" * 16
    assert "From" not in data


def test_no_channel_allowed_is_suppressed_and_nothing_is_sent(
    runtime: Runtime, people: People, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    ntf = enqueue(runtime, people["zeb"].patient_id)  # defaults: everything off
    assert drain(runtime, twilio_sender) == 1
    row = notification(runtime, ntf)
    assert (row.state, row.decision, row.reason) == ("suppressed", "suppress", "no_channel")
    assert prefer_client.requests == []
    assert attempts(runtime, ntf) == []


def test_the_daily_cap_defers_the_second_notification_to_when_it_allows_one(
    runtime: Runtime, people: People, twilio_sender: TwilioSender
) -> None:
    verified_number(runtime, people["zeb"].patient_id)
    first = enqueue(runtime, people["zeb"].patient_id)
    drain(runtime, twilio_sender)
    second = enqueue(runtime, people["zeb"].patient_id)
    drain(runtime, twilio_sender)
    sent = notification(runtime, first)
    assert sent.state == "sent"
    row = notification(runtime, second)
    assert (row.state, row.decision, row.reason) == ("pending", "defer", "cap_reached")
    assert sent.dispatched_at is not None
    assert row.next_attempt_at == sent.dispatched_at + timedelta(days=1)


def test_quiet_hours_defer_then_send(
    runtime: Runtime, people: People, twilio_sender: TwilioSender
) -> None:
    verified_number(
        runtime,
        people["zeb"].patient_id,
        time_zone="America/Chicago",
        quiet_start="21:00",
        quiet_end="08:00",
    )
    ntf = enqueue(runtime, people["zeb"].patient_id)
    night = datetime(2026, 12, 1, 5, 0, tzinfo=UTC)  # 23:00 in Chicago (CST)
    drain(runtime, twilio_sender, at=night)
    row = notification(runtime, ntf)
    assert (row.state, row.decision, row.reason) == ("pending", "defer", "quiet_hours")
    assert row.next_attempt_at == datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    drain(runtime, twilio_sender, at=datetime(2026, 12, 1, 13, 59, tzinfo=UTC))
    assert notification(runtime, ntf).state == "pending"
    drain(runtime, twilio_sender, at=datetime(2026, 12, 1, 14, 0, tzinfo=UTC))
    assert notification(runtime, ntf).state == "sent"


def test_an_unverified_number_is_never_used(
    runtime: Runtime, people: People, twilio_sender: TwilioSender
) -> None:
    verified_number(runtime, people["zeb"].patient_id)
    with transaction(runtime.sessions) as db:
        row = contacts.of_patient(db, people["zeb"].patient_id)
        assert row is not None
        row.verified_at = None
    ntf = enqueue(runtime, people["zeb"].patient_id)
    drain(runtime, twilio_sender)
    assert notification(runtime, ntf).reason == "unverified_number"


def test_every_decision_is_audited_by_id(
    runtime: Runtime, people: People, twilio_sender: TwilioSender
) -> None:
    ntf = enqueue(runtime, people["zeb"].patient_id)
    drain(runtime, twilio_sender)
    with runtime.sessions() as db:
        record = db.scalars(
            select(AuditRecord).where(AuditRecord.target == f"notification:{ntf}")
        ).one()
    assert (record.action, record.outcome) == ("sms.notification.suppress", "denied")


# Twilio's error answers (Prism: Prefer: code=..., example=...)


def fail_with(client: PreferClient, code: int, status: int = 400) -> None:
    client.prefer = f"code={status}, example=e{code}"


def test_21610_unsubscribed_turns_sms_off_and_lists_the_number(
    runtime: Runtime, people: People, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient)
    ntf = enqueue(runtime, patient)
    fail_with(prefer_client, 21610)
    drain(runtime, twilio_sender)
    row = notification(runtime, ntf)
    # Stopped for good, and the dispatcher recorded why on the next look.
    assert (row.state, row.reason, row.error_code) == ("suppressed", "no_channel", 21610)
    with runtime.sessions() as db:
        prefs = db.get(Preferences, patient)
        contact = contacts.of_patient(db, patient)
        assert prefs is not None and contact is not None
        assert prefs.sms_enabled is False
        assert db.get(OptOut, contact.number_hash) is not None
    assert len(attempts(runtime, ntf)) == 1


@pytest.mark.parametrize("code", [21211, 21612, 21614])
def test_an_unusable_number_stops_retrying(
    runtime: Runtime,
    people: People,
    twilio_sender: TwilioSender,
    prefer_client: PreferClient,
    code: int,
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient)
    ntf = enqueue(runtime, patient)
    fail_with(prefer_client, code)
    drain(runtime, twilio_sender)
    row = notification(runtime, ntf)
    assert (row.state, row.reason, row.error_code) == ("suppressed", "number_unusable", code)
    with runtime.sessions() as db:
        contact = contacts.of_patient(db, patient)
        assert contact is not None
        assert (contact.sms_usable, contact.unusable_code) == (False, code)


def test_an_unusable_sms_number_falls_back_to_an_allowed_call(
    runtime: Runtime, people: People, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient, voice_enabled=True)
    ntf = enqueue(runtime, patient)
    fail_with(prefer_client, 21614)
    prefer_client.only = MESSAGES
    drain(runtime, twilio_sender)
    row = notification(runtime, ntf)
    assert (row.state, row.channel, row.reason) == ("sent", "voice", "allowed")
    assert [a.channel for a in attempts(runtime, ntf)] == ["sms", "voice"]


@pytest.mark.parametrize("case", [(20429, 429), (30001, 400), (20500, 500)])
def test_transient_errors_retry_with_backoff(
    runtime: Runtime,
    people: People,
    twilio_sender: TwilioSender,
    prefer_client: PreferClient,
    case: tuple[int, int],
) -> None:
    code, status = case
    patient = people["zeb"].patient_id
    verified_number(runtime, patient)
    ntf = enqueue(runtime, patient)
    fail_with(prefer_client, code, status)
    started = utcnow()
    drain(runtime, twilio_sender)
    row = notification(runtime, ntf)
    assert (row.state, row.error_code, row.attempts) == ("pending", code, 1)
    wait = row.next_attempt_at - started  # type: ignore[operator]
    assert timedelta(seconds=14) <= wait <= timedelta(seconds=46)
    # Not before its time; then Twilio recovers and it goes.
    prefer_client.prefer = None
    drain(runtime, twilio_sender)
    assert notification(runtime, ntf).state == "pending"
    drain(runtime, twilio_sender, at=started + timedelta(minutes=2))
    row = notification(runtime, ntf)
    assert (row.state, row.attempts) == ("sent", 2)
    statuses = [a.status for a in attempts(runtime, ntf)]
    assert statuses == ["failed", "accepted"]


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    low = [delivery.backoff(n, rng=lambda: 0.0) for n in (1, 2, 3, 4)]
    high = [delivery.backoff(n, rng=lambda: 0.999) for n in (1, 2, 3, 4)]
    assert low == [timedelta(seconds=15 * 2**k) for k in range(4)]
    assert all(h > lo for h, lo in zip(high, low, strict=True))
    assert delivery.backoff(50, rng=lambda: 0.0) == timedelta(minutes=30)


def test_out_of_attempts_fails(
    runtime: Runtime, people: People, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient)
    ntf = enqueue(runtime, patient)
    fail_with(prefer_client, 20500, 500)
    later = utcnow()
    for _ in range(runtime.settings.sms_max_attempts + 1):
        drain(runtime, twilio_sender, at=later)
        later += timedelta(days=1)
    row = notification(runtime, ntf)
    assert (row.state, row.reason) == ("failed", "max_attempts")
    assert len(attempts(runtime, ntf)) == runtime.settings.sms_max_attempts


def test_twilio_down_retries_later(runtime: Runtime, people: People, closed_port: int) -> None:
    settings = twilio_settings(runtime.settings, f"http://127.0.0.1:{closed_port}")
    sender = TwilioSender(settings)
    verified_number(runtime, people["zeb"].patient_id)
    ntf = enqueue(runtime, people["zeb"].patient_id)
    drain(runtime, sender)
    row = notification(runtime, ntf)
    assert row.state == "pending"
    assert [a.status for a in attempts(runtime, ntf)] == ["failed"]


def test_twilio_slow_is_an_unknown_outcome_that_waits_for_the_callback(
    runtime: Runtime, people: People, silent_port: int
) -> None:
    settings = twilio_settings(
        runtime.settings, f"http://127.0.0.1:{silent_port}", twilio_timeout_seconds=0.5
    )
    sender = TwilioSender(settings)
    verified_number(runtime, people["zeb"].patient_id)
    ntf = enqueue(runtime, people["zeb"].patient_id)
    drain(runtime, sender)
    row = notification(runtime, ntf)
    # It may have reached Twilio: not sent again until the window passes without news.
    assert row.state == "sending"
    assert [a.status for a in attempts(runtime, ntf)] == ["unknown"]


def test_console_backend_prints_the_text_and_link_not_to_the_log(
    runtime: Runtime,
    people: People,
    console: ConsoleSender,
    console_out: StringIO,
    caplog: pytest.LogCaptureFixture,
) -> None:
    verified_number(runtime, people["zeb"].patient_id)
    enqueue(runtime, people["zeb"].patient_id)
    with caplog.at_level("DEBUG"):
        drain(runtime, console)
    printed = console_out.getvalue()
    assert "+12025550143" in printed
    assert SMS_LINK.search(printed)
    logged = "\n".join(str(r.__dict__) for r in caplog.records)
    assert "+12025550143" not in logged
    assert "2025550143" not in logged
    assert "/l/" not in logged


def test_voice_call_with_answering_machine_detection(
    runtime: Runtime, people: People, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    verified_number(runtime, people["zeb"].patient_id, sms_enabled=False, voice_enabled=True)
    ntf = enqueue(runtime, people["zeb"].patient_id)
    drain(runtime, twilio_sender)
    row = notification(runtime, ntf)
    assert (row.state, row.channel) == ("sent", "voice")
    [request] = [r for r in prefer_client.requests if r["url"].endswith(CALLS)]
    data = request["data"]
    assert data["MachineDetection"] == "DetectMessageEnd"
    assert data["AsyncAmd"] == "true"
    [attempt] = attempts(runtime, ntf)
    assert data["AsyncAmdStatusCallback"].endswith(f"/api/twilio/calls/{attempt.id}/amd")
    assert data["Url"].endswith(f"/api/twilio/calls/{attempt.id}/twiml")
    assert data["From"] == "+15005550006"


def test_parallel_drains_send_each_notification_once(
    runtime: Runtime, people: People, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    for person in ("zeb", "otto", "pip"):
        verified_number(runtime, people[person].patient_id, f"+1202555014{'zop'.index(person[0])}")
    ids = [enqueue(runtime, people[p].patient_id) for p in ("zeb", "otto", "pip")]
    ids += [enqueue(runtime, people["zeb"].patient_id) for _ in range(3)]  # over the cap
    threads = [threading.Thread(target=drain, args=(runtime, twilio_sender)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    states = [notification(runtime, i).state for i in ids]
    assert states[1:3] == ["sent"] * 2  # otto and pip
    zebs = sorted(states[:1] + states[3:])
    # One of zeb's is sent; the others were merged into it, or (held by another worker
    # meanwhile) deferred by the cap it used: never a second text.
    assert zebs.count("sent") == 1
    assert set(zebs) <= {"sent", "merged", "pending"}
    sent = [r for r in prefer_client.requests if r["url"].endswith(MESSAGES)]
    assert len(sent) == 3
    assert len({r["data"]["To"] for r in sent}) == 3


def test_the_rate_limit_spaces_sends_per_sender(
    runtime: Runtime, people: People, prism: Prism, prefer_client: PreferClient
) -> None:
    settings = twilio_settings(runtime.settings, prism.url, sms_rate_per_second=10.0)
    sender = TwilioSender(settings, http_client=prefer_client)
    from sms import ratelimit  # noqa: PLC0415

    now = utcnow()
    waits = [ratelimit.reserve(runtime, "sms:+15005550006", 10.0, now) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    # Another sender has its own slots.
    assert ratelimit.reserve(runtime, "sms:MGother", 10.0, now) == 0.0
    del sender


def test_a_code_is_made_when_sent_and_only_its_hash_is_kept(
    runtime: Runtime, people: People, console: ConsoleSender, console_out: StringIO
) -> None:
    patient = people["zeb"].patient_id
    contacts.set_number(
        runtime, patient_id=patient, actor="test", raw="(202) 555-0143", request_id=None
    )
    drain(runtime, console)
    printed = console_out.getvalue()
    assert "[sms to +12025550143]" in printed
    code = printed.split("code is ")[1][:6]
    with runtime.sessions() as db:
        contact = db.scalars(select(ContactPoint)).one()
        assert contact.code_hash and code not in contact.code_hash
    assert (
        contacts.confirm_code(runtime, patient_id=patient, actor="test", code=code, request_id=None)
        is contacts.CodeResult.OK
    )


def test_a_fatal_error_is_not_retried(
    runtime: Runtime, people: People, twilio_sender: TwilioSender
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient)
    ntf = enqueue(runtime, patient)
    [out] = delivery.claim(runtime, utcnow(), 10)[1]
    delivery.record_failure(runtime, out.attempt_id, ErrorKind.FATAL, 21606, utcnow())
    row = notification(runtime, ntf)
    assert (row.state, row.reason, row.error_code) == ("failed", "rejected", 21606)
