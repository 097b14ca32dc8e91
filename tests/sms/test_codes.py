"""One-time codes identity asks sms to text: through the outbox, only once committed,
never to a number on the opt-out list."""

from __future__ import annotations

from datetime import UTC, datetime
from io import StringIO

import pytest
from sqlalchemy import select

from carebridge import outbox, wiring
from carebridge.db import transaction
from carebridge.runtime import Runtime
from sms import phone
from sms.backends import ConsoleSender
from sms.jobs import SmsChannel
from sms.models import OptOut
from sms.twilio_client import TwilioSender
from tests.sms.helpers import PreferClient

NUMBER = "+15555550123"


def channels(runtime: Runtime, out: StringIO) -> outbox.Channels:
    sms = SmsChannel(runtime, ConsoleSender(out=out))
    return outbox.Channels(handlers={sms.channel: sms}, ledgers=(sms,))


def send_code(runtime: Runtime, code: str = "418207") -> str:
    sender = wiring.identity_outward(runtime).one_time_codes
    with transaction(runtime.sessions) as db:
        return sender.send_code(db, to=NUMBER, code=code)


def states(runtime: Runtime) -> list[tuple[str, str | None]]:
    with runtime.sessions() as db:
        return [(row.state, row.last_error) for row in db.scalars(select(outbox.OutboxMessage))]


def test_a_code_is_texted_by_the_worker_once_its_transaction_commits(runtime: Runtime) -> None:
    out = StringIO()
    send_code(runtime)
    with runtime.sessions() as db:
        (row,) = db.scalars(select(outbox.OutboxMessage))
        assert row.sealed is not None and b"418207" not in row.sealed
    assert out.getvalue() == ""  # nothing before the worker runs
    outbox.drain(runtime, channels(runtime, out))
    (line,) = out.getvalue().splitlines()
    assert line.startswith(f"[sms to {NUMBER}] ") and "418207" in line
    assert states(runtime) == [(outbox.DONE, None)]
    outbox.drain(runtime, channels(runtime, out))
    assert len(out.getvalue().splitlines()) == 1  # texted once


def test_a_rolled_back_transaction_texts_nothing(runtime: Runtime) -> None:
    sender = wiring.identity_outward(runtime).one_time_codes

    def sign_in_that_fails() -> None:
        with transaction(runtime.sessions) as db:
            sender.send_code(db, to=NUMBER, code="418207")
            raise RuntimeError("the sign-in did not happen")

    with pytest.raises(RuntimeError):
        sign_in_that_fails()
    out = StringIO()
    outbox.drain(runtime, channels(runtime, out))
    assert out.getvalue() == "" and states(runtime) == []


def test_a_number_that_opted_out_gets_no_code(runtime: Runtime) -> None:
    with transaction(runtime.sessions) as db:
        db.add(
            OptOut(
                number_hash=phone.number_hash(runtime.keyring, NUMBER),
                opted_out_at=datetime.now(UTC),
                source="keyword",
            )
        )
    send_code(runtime)
    out = StringIO()
    outbox.drain(runtime, channels(runtime, out))
    assert out.getvalue() == ""
    assert states(runtime) == [(outbox.DEAD, "opted_out")]


# Through the real twilio library, against Twilio's described API (Prism)


def twilio_channels(runtime: Runtime, sender: TwilioSender) -> outbox.Channels:
    sms = SmsChannel(runtime, sender)
    return outbox.Channels(handlers={sms.channel: sms})


def test_twilio_gets_the_code_once(
    runtime: Runtime, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    message_id = send_code(runtime)
    outbox.drain(runtime, twilio_channels(runtime, twilio_sender))
    outbox.drain(runtime, twilio_channels(runtime, twilio_sender))
    (request,) = [r for r in prefer_client.requests if r["url"].endswith("/Messages.json")]
    assert request["data"]["To"] == NUMBER and "418207" in request["data"]["Body"]
    assert request["data"]["StatusCallback"].endswith(f"/{message_id}/status")
    assert states(runtime) == [(outbox.DONE, None)]


def test_a_number_twilio_cannot_text_is_a_dead_letter_at_once(
    runtime: Runtime, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    send_code(runtime)
    prefer_client.prefer = "code=400, example=e21211"
    outbox.drain(runtime, twilio_channels(runtime, twilio_sender))
    assert states(runtime) == [(outbox.DEAD, "sms_unusable:21211")]


def test_a_rate_limited_code_waits_for_the_backoff(
    runtime: Runtime, twilio_sender: TwilioSender, prefer_client: PreferClient
) -> None:
    send_code(runtime)
    prefer_client.prefer = "code=429, example=e20429"
    outbox.drain(runtime, twilio_channels(runtime, twilio_sender))
    assert states(runtime) == [(outbox.PENDING, "retry:20429")]
