"""Queuing an e-mail: what identity's ``EmailSender`` is, and the checks at the door."""

from __future__ import annotations

import unicodedata

from sqlalchemy import delete
from sqlalchemy.orm import Session

from carebridge import outbox
from carebridge.keyring import Keyring
from carebridge.runtime import Runtime
from carebridge.settings import is_one_address

CHANNEL = "email"
TRANSACTIONAL = "transactional"
SUBJECT_MAX_CHARS = 200
# The outbox row's only clear field: a keyed hash of the recipient, so the e-mails still
# queued for an address can be withdrawn (a deleted account's) without opening any row.
_RECIPIENT = "outbox-email-to"


def recipient_key(keyring: Keyring, address: str) -> str:
    normalised = unicodedata.normalize("NFKC", address).strip().casefold()
    return keyring.lookup_hash(_RECIPIENT, normalised)


class UnsafeEmailHeaderError(ValueError):
    """A recipient that is not exactly one address, or a subject or address carrying a
    line break or another control character: what would add a header (Bcc:, a second
    To:) to the e-mail. Refused before anything is queued."""


def _check_subject(subject: str) -> None:
    if not subject.strip() or len(subject) > SUBJECT_MAX_CHARS:
        raise UnsafeEmailHeaderError("the subject must be one line of text")
    # Cc: every control character, CR and LF among them; Zl/Zp: Unicode's line breaks.
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in subject):
        raise UnsafeEmailHeaderError("the subject must be one line of text")


class OutboxEmailSender:
    """Queues an e-mail in the caller's transaction; returns the outbox ID."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def send_email(
        self, db: Session, *, to: str, subject: str, text: str, html: str | None = None
    ) -> str:
        """Raises :class:`UnsafeEmailHeaderError` for a ``to`` that is not one address on one
        line, or a ``subject`` that is not one line of text."""
        if not is_one_address(to):
            raise UnsafeEmailHeaderError("the recipient must be exactly one address")
        _check_subject(subject)
        content = {"to": to, "subject": subject, "text": text}
        if html is not None:
            content["html"] = html
        return outbox.enqueue(
            db,
            channel=CHANNEL,
            kind=TRANSACTIONAL,
            payload={"to": recipient_key(self._runtime.keyring, to)},
            content=content,
            keyring=self._runtime.keyring,
        )

    def withdraw(self, db: Session, *, to: str) -> int:
        """Delete, in ``db``'s transaction, the e-mails to ``to`` not sent yet: pending
        ones and dead letters (both still hold the sealed address and text). One being
        sent right now is left to finish; it is wiped once sent."""
        table = outbox.OutboxMessage
        result = db.execute(
            delete(table)
            .where(
                table.channel == CHANNEL,
                table.state.in_((outbox.PENDING, outbox.DEAD)),
                table.payload["to"].as_string() == recipient_key(self._runtime.keyring, to),
            )
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
