"""The e-mails identity sent, read the way they leave: the outbox delivered to a mailbox.

The password reset tests read their links from here. Every queued e-mail goes through the
real outbox (sealed row, claim, delivery, done) to :class:`Mailbox`, the one handler, which
keeps it in memory (fast: the many HTTP-level tests). :class:`SmtpMailbox` (the browser
journeys) goes all the way: carebridge's own ``SmtpMailer`` hands each e-mail to a real
SMTP server (aiosmtpd, tests/smtp_server.py) and what that server received is read back
from the MIME message.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from carebridge import mail, outbox
from carebridge.mail.smtp import SmtpMailer
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from tests.identity.verification_mail import CODE
from tests.smtp_server import Received, SmtpServer

_RESET_LINK = re.compile(r"https?://\S+/password/reset\?token=(\S+)")


@dataclass(frozen=True)
class Sent:
    to: str
    subject: str
    text: str
    html: str


class Mailbox:
    """An e-mail channel that keeps what it is given."""

    channel = mail.CHANNEL

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    def deliver(self, message: outbox.Message) -> None:
        content = message.content
        self.sent.append(
            Sent(content["to"], content["subject"], content["text"], content.get("html", ""))
        )

    def collect(self, runtime: Runtime) -> list[Sent]:
        """Deliver what the outbox holds; every e-mail received so far."""
        outbox.drain(runtime, outbox.Channels(handlers={mail.CHANNEL: self}))
        return self.sent

    def to(self, runtime: Runtime, address: str) -> list[Sent]:
        return [sent for sent in self.collect(runtime) if sent.to == address]

    def wait_for(self, runtime: Runtime, address: str, count: int) -> Sent:
        """The ``count``-th e-mail to ``address``, once it arrived (some e-mails are queued
        after the answer that caused them)."""
        deadline = time.monotonic() + 10
        while len(received := self.to(runtime, address)) < count:
            assert time.monotonic() < deadline, f"no e-mail number {count} to {address}"
            time.sleep(0.1)
        return received[count - 1]

    def last_to(self, runtime: Runtime, address: str) -> Sent:
        received = self.to(runtime, address)
        assert received, f"no e-mail to {address}"
        return received[-1]


class SmtpMailbox(Mailbox):
    """The outbox delivered by carebridge's ``SmtpMailer`` to ``server``; what it received.

    ``sent`` is what the SMTP server accepted, oldest first: the recipient, the subject
    and the text and HTML parts of each parsed message.
    """

    def __init__(self, server: SmtpServer) -> None:
        super().__init__()
        self.server = server
        self._mailer = SmtpMailer(Settings(**server.settings()))

    def deliver(self, message: outbox.Message) -> None:
        self._mailer.deliver(message)

    def collect(self, runtime: Runtime) -> list[Sent]:
        super().collect(runtime)  # through self.deliver: SMTP to the server
        self.sent = [_read(received) for received in self.server.messages]
        return self.sent


def _read(received: Received) -> Sent:
    (to,) = received.rcpt_tos
    assert received.email["To"] == to, (received.email["To"], to)
    html = received.part("html") if received.email.get_body(("html",)) is not None else ""
    return Sent(to, str(received.email["Subject"]), received.part("plain"), html)


def reset_token(sent: Sent) -> str:
    """The token of the reset link in an e-mail (text and HTML parts agree)."""
    match = _RESET_LINK.search(sent.text)
    assert match, sent.text
    assert match.group(0) in sent.html
    return match.group(1)


def code_in(sent: Sent) -> str:
    """The e-mail verification code in an e-mail."""
    match = CODE.search(sent.text)
    assert match, sent.text
    return match.group(1)
