"""One-time codes identity asks to text (identity's ``OneTimeCodeSender``), and the
delivery of every outbox row of channel ``sms`` (codes and security notices).

Unlike a notification (sms's own ledger, decided by the dispatcher), a code is a row of
the channel-neutral outbox (carebridge.outbox, channel ``sms``), with the number and the
code sealed under the keyring in the caller's transaction: texted if and only if that
commits, and wiped from the row once Twilio took it.
"""

from __future__ import annotations

import time

from sqlalchemy.orm import Session

from carebridge import outbox
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from sms import contacts, phone, ratelimit, security_notices, texts
from sms.interfaces import ErrorKind, Sender, SendError

CHANNEL = security_notices.CHANNEL
ONE_TIME_CODE = "one_time_code"

# What no retry can help: the row becomes a dead letter at once.
_REFUSED = frozenset(
    {ErrorKind.OPTED_OUT, ErrorKind.SMS_UNUSABLE, ErrorKind.VOICE_UNUSABLE, ErrorKind.FATAL}
)


class OutboxCodeSender:
    """Queues a code for a number in the caller's transaction; returns the outbox ID."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def send_code(self, db: Session, *, to: str, code: str) -> str:
        return outbox.enqueue(
            db,
            channel=CHANNEL,
            kind=ONE_TIME_CODE,
            payload={},
            content={"to": to, "code": code},
            keyring=self._runtime.keyring,
        )


def deliver(runtime: Runtime, sender: Sender, message: outbox.Message) -> None:
    """Text one code, or one security notice (:mod:`sms.security_notices`): never to a
    number on our opt-out list; at the sender's rate."""
    label = runtime.settings.sms_sender_label
    if message.kind == ONE_TIME_CODE:
        body = texts.one_time_code_sms(label, message.content["code"])
    elif message.kind == security_notices.SECURITY_NOTICE:
        with runtime.sessions() as db:
            if not security_notices.still_theirs(db, runtime, message):
                raise outbox.Undeliverable("number_changed")
        body = texts.security_notice_sms(label, message.content["link"])
    else:
        raise outbox.Undeliverable("unknown_kind")
    send_text(runtime, sender, message, body)


def send_text(runtime: Runtime, sender: Sender, message: outbox.Message, body: str) -> None:
    """Text ``body`` to the row's sealed number (``content["to"]``): never to a number on
    our opt-out list (a STOP may have come in since it was queued); at the sender's rate;
    a refusal no retry can help makes the row a dead letter at once."""
    to = message.content["to"]
    with runtime.sessions() as db:
        if contacts.is_opted_out(db, phone.number_hash(runtime.keyring, to)):
            raise outbox.Undeliverable("opted_out")
    settings = runtime.settings
    wait = ratelimit.reserve(runtime, f"sms:{sender.key}", settings.sms_rate_per_second, utcnow())
    if wait > 0:
        time.sleep(wait)
    # Its status callbacks name no attempt of sms's ledger: the webhook acknowledges and
    # ignores them (the row is done once Twilio accepted the text).
    callback = f"{settings.effective_public_base_url}/api/twilio/messages/{message.id}/status"
    try:
        sender.send_sms(to, body, callback)
    except SendError as exc:
        reason = f"{exc.kind.value}:{exc.code}" if exc.code else exc.kind.value
        if exc.kind in _REFUSED:
            raise outbox.Undeliverable(reason) from None
        raise outbox.RetryLater(reason) from None
