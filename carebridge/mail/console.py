"""The development backend: each e-mail printed to the terminal."""

from __future__ import annotations

import sys
from typing import TextIO

from carebridge import outbox
from carebridge.mail.sender import CHANNEL, TRANSACTIONAL


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
