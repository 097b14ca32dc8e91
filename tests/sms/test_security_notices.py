"""Security notices identity asks sms to text (a recovery's "this wasn't me" link): to the
patient's verified number whatever its notification preferences, never to one that opted
out, one generic sentence in GSM-7 and the link, through the outbox."""

from __future__ import annotations

from datetime import UTC, datetime
from io import StringIO

from sqlalchemy import select

from carebridge import outbox, wiring
from carebridge.db import transaction
from carebridge.runtime import Runtime
from sms import contacts, phone
from sms.backends import ConsoleSender
from sms.jobs import SmsChannel
from sms.models import OptOut
from sms.twilio_client import TwilioSender
from tests.identity.roster_helpers import ZEB
from tests.sms.helpers import People, PreferClient, verified_number

NUMBER = "+12025550143"
LINK = "https://carebridge.example.org/recovery/cancel?token=rcv_AAAAAAAAAAAAAAAAAAAAAA." + (
    "B" * 43
)
# GSM 03.38's basic character set (one septet each): what a text may hold and still go
# as GSM-7 (anything else makes the carrier send it as UCS-2, at 70 characters a part).
GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)


def send_notice(runtime: Runtime, patient_id: str) -> str | None:
    texter = wiring.identity_outward(runtime).security_texts
    with transaction(runtime.sessions) as db:
        return texter.send_security_notice(db, patient_id=patient_id, link=LINK)


def drain(runtime: Runtime, sender: ConsoleSender | TwilioSender) -> None:
    sms = SmsChannel(runtime, sender)
    outbox.drain(runtime, outbox.Channels(handlers={sms.channel: sms}, ledgers=(sms,)))


def states(runtime: Runtime) -> list[tuple[str, str | None]]:
    with runtime.sessions() as db:
        return [(row.state, row.last_error) for row in db.scalars(select(outbox.OutboxMessage))]


def opt_out(runtime: Runtime, number: str = NUMBER) -> None:
    with transaction(runtime.sessions) as db:
        db.add(
            OptOut(
                number_hash=phone.number_hash(runtime.keyring, number),
                opted_out_at=datetime.now(UTC),
                source="keyword",
            )
        )


def test_a_security_notice_reaches_a_verified_number_with_notifications_turned_off(
    runtime: Runtime, people: People
) -> None:
    zeb = people["zeb"].patient_id
    verified_number(runtime, zeb, NUMBER, sms_enabled=False)
    assert send_notice(runtime, zeb) is not None
    with runtime.sessions() as db:
        (row,) = db.scalars(select(outbox.OutboxMessage))
        assert row.sealed is not None and NUMBER.encode() not in row.sealed
        assert b"recovery" not in row.sealed  # the link is sealed too
    out = StringIO()
    drain(runtime, ConsoleSender(out=out))
    (line,) = out.getvalue().splitlines()
    prefix = f"[sms to {NUMBER}] "
    assert line.startswith(prefix)
    body = line.removeprefix(prefix)
    assert LINK in body and "STOP" in body and "wasn't you" in body
    assert set(body) <= GSM7, set(body) - GSM7
    # Nothing about the person or their care: the generic sentence and the link.
    assert not any(part in body for part in (ZEB[0], ZEB[1], ZEB[2], ZEB[3]))
    assert states(runtime) == [(outbox.DONE, None)]


def test_a_number_that_opted_out_gets_no_security_notice(runtime: Runtime, people: People) -> None:
    zeb = people["zeb"].patient_id
    verified_number(runtime, zeb, NUMBER)
    opt_out(runtime)
    assert send_notice(runtime, zeb) is None
    assert states(runtime) == []


def test_a_stop_after_the_notice_was_queued_still_wins(runtime: Runtime, people: People) -> None:
    zeb = people["zeb"].patient_id
    verified_number(runtime, zeb, NUMBER)
    send_notice(runtime, zeb)
    opt_out(runtime)
    out = StringIO()
    drain(runtime, ConsoleSender(out=out))
    assert out.getvalue() == ""
    assert states(runtime) == [(outbox.DEAD, "opted_out")]


def test_an_unverified_or_removed_number_gets_no_security_notice(
    runtime: Runtime, people: People
) -> None:
    zeb, otto, pip = (people[name].patient_id for name in ("zeb", "otto", "pip"))
    contacts.set_number(runtime, patient_id=zeb, actor="test", raw=NUMBER, request_id=None)
    verified_number(runtime, otto, "+12025550144")
    contacts.remove(runtime, patient_id=otto, actor="test", request_id=None)
    assert send_notice(runtime, zeb) is None  # a number never proved may be anyone's
    assert send_notice(runtime, otto) is None
    assert send_notice(runtime, pip) is None  # no number at all
    assert states(runtime) == []


def test_twilio_gets_the_security_notice_once(
    runtime: Runtime, people: People, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    zeb = people["zeb"].patient_id
    verified_number(runtime, zeb, NUMBER)
    message_id = send_notice(runtime, zeb)
    drain(runtime, twilio_sender)
    drain(runtime, twilio_sender)
    (request,) = [r for r in prefer_client.requests if r["url"].endswith("/Messages.json")]
    assert request["data"]["To"] == NUMBER and LINK in request["data"]["Body"]
    assert request["data"]["StatusCallback"].endswith(f"/{message_id}/status")
    assert states(runtime) == [(outbox.DONE, None)]


def test_a_security_notice_to_a_number_changed_since_it_was_queued_is_refused(
    runtime: Runtime, people: People
) -> None:
    # Queued while Twilio was down; meanwhile the patient moved to a new number (the old
    # one may be anybody's now), removed theirs, or deleted the account (which forgets it).
    zeb, otto, pip = (people[name].patient_id for name in ("zeb", "otto", "pip"))
    for patient_id, number in ((zeb, NUMBER), (otto, "+12025550144"), (pip, "+12025550145")):
        verified_number(runtime, patient_id, number)
        assert send_notice(runtime, patient_id) is not None
    verified_number(runtime, zeb, "+12025550146")
    contacts.remove(runtime, patient_id=otto, actor="test", request_id=None)
    with transaction(runtime.sessions) as db:
        contacts.forget_patient(db, pip)
    out = StringIO()
    drain(runtime, ConsoleSender(out=out))
    assert out.getvalue() == ""
    assert states(runtime) == [(outbox.DEAD, "number_changed")] * 3
