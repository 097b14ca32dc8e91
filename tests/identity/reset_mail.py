"""The e-mails identity sent, read the way they leave: the outbox delivered to a mailbox.

The password reset tests read their links from here. Every queued e-mail goes through the
real outbox (sealed row, claim, delivery, done) to :class:`Mailbox`, the one handler.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from carebridge import mail, outbox
from carebridge.runtime import Runtime

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

    def last_to(self, runtime: Runtime, address: str) -> Sent:
        received = self.to(runtime, address)
        assert received, f"no e-mail to {address}"
        return received[-1]


def reset_token(sent: Sent) -> str:
    """The token of the reset link in an e-mail (text and HTML parts agree)."""
    match = _RESET_LINK.search(sent.text)
    assert match, sent.text
    assert match.group(0) in sent.html
    return match.group(1)
