"""identity's contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session

# What identity needs from outside (wired by the composition root)
#
# identity declares these and never imports their implementations: carebridge.wiring
# gives it sms's one-time-code sender and the outbox's e-mail sender. Both enqueue in
# the caller's transaction (the transactional outbox): sent if and only if it commits.


class OneTimeCodeSender(Protocol):
    """Texts a one-time code to a phone number the account has verified (SMS)."""

    def send_code(self, db: Session, *, to: str, code: str) -> str:
        """Queue ``code`` for ``to`` (E.164) in ``db``'s transaction; returns the outbox
        ID. The number and the code are stored sealed and wiped once sent."""


class EmailSender(Protocol):
    """Sends a transactional e-mail: IDs and links only, never PHI."""

    def send_email(
        self, db: Session, *, to: str, subject: str, text: str, html: str | None = None
    ) -> str:
        """Queue an e-mail in ``db``'s transaction; returns the outbox ID."""


@dataclass(frozen=True)
class Outward:
    """Everything identity needs from outside, as the composition root wired it."""

    one_time_codes: OneTimeCodeSender
    email: EmailSender
