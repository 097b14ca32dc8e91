"""Transactional e-mail through the outbox (identity's ``EmailSender``) and its backends.

An e-mail carries IDs and links only, never PHI; even so, the address and the text are
sealed in the outbox row (a link may hold a token) and wiped once delivered.
:class:`OutboxEmailSender` queues it in the caller's transaction, refusing a recipient or
subject that could smuggle a header (:class:`UnsafeEmailHeaderError`). The outbox worker hands
it to the backend ``CAREBRIDGE_EMAIL_BACKEND`` chose: :class:`ConsoleMailer` prints it to
the terminal (development, like sms's console sender); :class:`SmtpMailer` sends it
through the relay at ``CAREBRIDGE_SMTP_URL`` (production requires it).

This is the public API; the modules behind it are the package's own.
"""

from __future__ import annotations

from carebridge.mail.console import ConsoleMailer
from carebridge.mail.sender import CHANNEL, TRANSACTIONAL, OutboxEmailSender, UnsafeEmailHeaderError
from carebridge.mail.smtp import SmtpMailer, compose

__all__ = [
    "CHANNEL",
    "TRANSACTIONAL",
    "ConsoleMailer",
    "OutboxEmailSender",
    "SmtpMailer",
    "UnsafeEmailHeaderError",
    "compose",
]
