"""Transactional e-mail through the outbox (identity's ``EmailSender``), and its console.

An e-mail carries IDs and links only, never PHI; even so, the address and the text are
sealed in the outbox row (a link may hold a token) and wiped once delivered. There is no
SMTP backend yet: in development the console prints each e-mail to the terminal (like
sms's console sender); in production no e-mail handler is registered, so e-mails wait in
the outbox, visible in ``carebridge notifications status``, until one is.
"""

from __future__ import annotations

import sys
from typing import TextIO

from sqlalchemy.orm import Session

from carebridge import outbox
from carebridge.runtime import Runtime

CHANNEL = "email"
TRANSACTIONAL = "transactional"


class OutboxEmailSender:
    """Queues an e-mail in the caller's transaction; returns the outbox ID."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def send_email(
        self, db: Session, *, to: str, subject: str, text: str, html: str | None = None
    ) -> str:
        content = {"to": to, "subject": subject, "text": text}
        if html is not None:
            content["html"] = html
        return outbox.enqueue(
            db,
            channel=CHANNEL,
            kind=TRANSACTIONAL,
            payload={},
            content=content,
            keyring=self._runtime.keyring,
        )


class ConsoleMailer:
    """Prints each e-mail to standard output (the developer's terminal, not the log)."""

    channel = CHANNEL

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out

    def deliver(self, message: outbox.Message) -> None:
        if message.kind != TRANSACTIONAL:
            raise outbox.Undeliverable("unknown_kind")
        content = message.content
        print(
            f"[email to {content['to']}] {content['subject']}\n{content['text']}",
            file=self._out or sys.stdout,
            flush=True,
        )
