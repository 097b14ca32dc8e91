"""No message goes unnoticed: a notice that cannot go now is deferred and merged, and only
the patient's choice or no usable contact suppresses one (Prism for Twilio, aiosmtpd for
e-mail, SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from carebridge.db import transaction
from carebridge.keyring import associated_data
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity.accounts import login_hash
from identity.models import LoginIdentifier
from sms import delivery, outbox, preferences
from sms.interfaces import NoticeStatus, notice_status_of_thread
from sms.models import ContactPoint, Notification, OptOut
from sms.preferences import PreferenceChanges, PreferenceError
from sms.twilio_client import TwilioSender
from tests.identity.reset_mail import SmtpMailbox
from tests.sms.helpers import SMS_LINK, People, PreferClient, verified_number
from tests.smtp_server import SmtpServer

MESSAGES = "/Messages.json"


def enqueue(runtime: Runtime, patient_id: str, thread_id: str = "thr_abc") -> str:
    with transaction(runtime.sessions) as db:
        return outbox.enqueue(
            db, patient_id=patient_id, kind=outbox.NEW_MESSAGE, thread_id=thread_id
        )


def row(runtime: Runtime, notification_id: str) -> Notification:
    with runtime.sessions() as db:
        found = db.get(Notification, notification_id)
        assert found is not None
        return found


def drain(runtime: Runtime, sender: TwilioSender, at: datetime) -> int:
    return delivery.drain(runtime, sender, clock=lambda: at)


def texts(prefer_client: PreferClient) -> list[str]:
    return [r["data"]["Body"] for r in prefer_client.requests if r["url"].endswith(MESSAGES)]


def status(runtime: Runtime, thread_id: str = "thr_abc") -> NoticeStatus | None:
    with runtime.sessions() as db:
        return notice_status_of_thread(db, thread_id)


def test_a_second_message_the_same_day_is_deferred_then_merged_the_next_day(
    runtime: Runtime, people: People, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient)  # at most 1 a day
    now = utcnow()
    first = enqueue(runtime, patient)
    drain(runtime, twilio_sender, now)
    second, third = enqueue(runtime, patient, "thr_b"), enqueue(runtime, patient, "thr_c")
    drain(runtime, twilio_sender, now + timedelta(hours=2))
    assert len(texts(prefer_client)) == 1
    assert [row(runtime, i).reason for i in (second, third)] == ["cap_reached"] * 2
    assert status(runtime, "thr_b") is NoticeStatus.WAITING
    # Not a minute early: the first notice is still within the day.
    drain(runtime, twilio_sender, now + timedelta(hours=23))
    assert len(texts(prefer_client)) == 1
    drain(runtime, twilio_sender, now + timedelta(days=1, minutes=1))
    [_, merged] = texts(prefer_client)
    assert "You have 2 new secure messages." in merged
    assert SMS_LINK.search(merged)
    assert len(merged) <= 160
    kept, folded = row(runtime, second), row(runtime, third)
    assert (kept.state, kept.covers) == ("sent", 2)
    assert (folded.state, folded.merged_into) == ("merged", second)
    assert row(runtime, first).covers == 1
    assert status(runtime, "thr_c") is NoticeStatus.SENT


def test_messages_in_quiet_hours_get_one_notice_when_they_end(
    runtime: Runtime, people: People, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient, quiet_start="21:00", quiet_end="08:00")
    evening = (utcnow() + timedelta(days=1)).replace(hour=22, minute=0, second=0, microsecond=0)
    ids = [enqueue(runtime, patient) for _ in range(3)]
    drain(runtime, twilio_sender, evening)
    end = evening.replace(hour=8) + timedelta(days=1)
    assert [(row(runtime, i).reason, row(runtime, i).next_attempt_at) for i in ids] == [
        ("quiet_hours", end)
    ] * 3
    assert texts(prefer_client) == []
    drain(runtime, twilio_sender, end + timedelta(seconds=30))
    [notice] = texts(prefer_client)
    assert "You have 3 new secure messages." in notice
    assert sorted(row(runtime, i).state for i in ids) == ["merged", "merged", "sent"]


def test_an_opted_out_patient_is_suppressed_with_the_reason(
    runtime: Runtime, people: People, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient)
    with transaction(runtime.sessions) as db:
        contact = db.scalars(select(ContactPoint).where(ContactPoint.patient_id == patient)).one()
        db.add(OptOut(number_hash=contact.number_hash, opted_out_at=utcnow(), source="keyword"))
    ntf = enqueue(runtime, patient)
    drain(runtime, twilio_sender, utcnow())
    assert (row(runtime, ntf).state, row(runtime, ntf).reason) == ("suppressed", "opted_out")
    assert texts(prefer_client) == []
    # The patient's choice: the care team is not told why, only that none went.
    assert status(runtime) is NoticeStatus.NOT_SENT


def test_no_usable_number_is_shown_to_the_care_team(
    runtime: Runtime, people: People, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient)
    with transaction(runtime.sessions) as db:
        contact = db.scalars(select(ContactPoint).where(ContactPoint.patient_id == patient)).one()
        contact.sms_usable, contact.unusable_code = False, 21614  # a landline
    ntf = enqueue(runtime, patient)
    drain(runtime, twilio_sender, utcnow())
    assert (row(runtime, ntf).state, row(runtime, ntf).reason) == ("suppressed", "number_unusable")
    assert texts(prefer_client) == []
    assert status(runtime) is NoticeStatus.UNREACHABLE


def test_two_workers_send_one_notice_for_a_patients_messages(
    runtime: Runtime,
    people: People,
    twilio_sender: TwilioSender,
    prefer_client: PreferClient,
) -> None:
    patient = people["zeb"].patient_id
    verified_number(runtime, patient)
    ids = [enqueue(runtime, patient, f"thr_{n}") for n in range(6)]
    now = utcnow()
    barrier = threading.Barrier(2)

    def work() -> None:
        barrier.wait()
        drain(runtime, twilio_sender, now)

    workers = [threading.Thread(target=work) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(texts(prefer_client)) == 1
    # Whatever the second worker held meanwhile waits for the next day, and goes as one.
    drain(runtime, twilio_sender, now + timedelta(days=1, minutes=1))
    rows = [row(runtime, i) for i in ids]
    sent = [r for r in rows if r.state == "sent"]
    assert len(texts(prefer_client)) == len(sent) <= 2
    assert sum(r.covers for r in sent) == 6
    assert all(r.state in ("sent", "merged") for r in rows)


def give_verified_address(runtime: Runtime, account_id: str, address: str) -> None:
    with transaction(runtime.sessions) as db:
        db.add(
            LoginIdentifier(
                account_id=account_id,
                lookup_hash=login_hash(runtime.keyring, address),
                encrypted=runtime.keyring.encrypt(
                    address.encode(), associated_data("login", account_id)
                ),
                verified_at=utcnow(),
            )
        )


def only_email(runtime: Runtime, patient_id: str) -> None:
    preferences.update(
        runtime,
        patient_id=patient_id,
        actor="test",
        changes=PreferenceChanges(
            email_enabled=True,
            time_zone="UTC",
            quiet_start="00:00",
            quiet_end="00:00",
            daily_cap=1,
            weekly_cap=3,
        ),
        request_id=None,
    )


def test_an_email_notice_goes_through_the_outbox_with_the_secure_link_only(
    runtime: Runtime,
    people: People,
    twilio_sender: TwilioSender,
    prefer_client: PreferClient,
    smtp_server: SmtpServer,
) -> None:
    zeb = people["zeb"]
    give_verified_address(runtime, zeb.account_id, "zeb@example.org")
    only_email(runtime, zeb.patient_id)
    ntf = enqueue(runtime, zeb.patient_id, "thr_mail")
    drain(runtime, twilio_sender, utcnow())
    found = row(runtime, ntf)
    assert (found.state, found.channel) == ("sent", "email")
    assert texts(prefer_client) == []
    [sent] = SmtpMailbox(smtp_server).collect(runtime)
    assert sent.to == "zeb@example.org"
    assert "You have a new secure message" in sent.subject
    assert SMS_LINK.search(sent.text)
    # Generic: no thread, no patient, nothing of the message.
    assert "thr_mail" not in sent.text
    assert zeb.patient_id not in sent.text


def test_email_notices_wait_for_a_verified_address(runtime: Runtime, people: People) -> None:
    with pytest.raises(PreferenceError) as refused:
        only_email(runtime, people["zeb"].patient_id)
    assert refused.value.field == "email_enabled"


def test_email_notices_to_an_address_no_longer_verified_are_no_usable_contact(
    runtime: Runtime, people: People, twilio_sender: TwilioSender
) -> None:
    zeb = people["zeb"]
    give_verified_address(runtime, zeb.account_id, "zeb@example.org")
    only_email(runtime, zeb.patient_id)
    with transaction(runtime.sessions) as db:
        login = db.get(LoginIdentifier, zeb.account_id)
        assert login is not None
        login.verified_at = None  # changed, and the new one not proved yet
    ntf = enqueue(runtime, zeb.patient_id)
    drain(runtime, twilio_sender, utcnow())
    assert row(runtime, ntf).reason == "no_address"
    assert status(runtime) is NoticeStatus.UNREACHABLE
