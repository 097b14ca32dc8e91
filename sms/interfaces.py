"""sms's contracts: what a sender backend does, how its errors are classified, and what
other packages may ask of sms (the rest of the package is private to it).

:mod:`sms.delivery` is the only caller of a :class:`Sender`; :mod:`sms.backends` builds
the configured one (the console for development, :mod:`sms.twilio_client` for production).
messaging writes the notice of a new message with :func:`new_message_notice`, and asks
how it went with :func:`notice_status_of_thread` (sms never tells messaging anything);
identity's security notices by SMS are :class:`SecurityNoticeTexter`'s (the composition
root wires it). What sms needs from outside, the care team's name for a notice the patient
allowed to name it, is :class:`TeamNames` (messaging's, wired by the composition root).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import Table
from sqlalchemy.orm import Session

from carebridge.db import FromGate
from sms import notice_status, outbox
from sms.notice_status import NoticeStatus
from sms.recipients import Recipient
from sms.security_notices import OutboxSecurityNoticeTexter

__all__ = [
    "ErrorKind",
    "NoticeStatus",  # waiting, sent, unreachable (no usable contact) or not sent
    "Recipient",  # who a notice is for: the patient, or (later) an account acting for them
    "SecurityNoticeTexter",  # identity's Protocol: a security notice texted to a verified number
    "SendError",
    "Sender",
    "TeamNames",  # what sms needs from outside: a thread's care team name (wired by the root)
    "classify",
    "new_message_notice",
    "notice_of_thread_columns",  # the same, as columns to fold into a statement
    "notice_status_of",  # the status those columns say
    "notice_status_of_thread",
]


class ErrorKind(StrEnum):
    RETRY = "retry"  # try again later: rate limited, Twilio unavailable, not sent at all
    UNKNOWN = "unknown"  # it may have been sent (a read timeout): wait for Twilio's callback
    OPTED_OUT = "opted_out"  # 21610: the recipient sent STOP to this sender
    SMS_UNUSABLE = "sms_unusable"  # the number cannot receive SMS
    VOICE_UNUSABLE = "voice_unusable"  # the number cannot be called
    FATAL = "fatal"  # our request is wrong: retrying cannot help


class SendError(Exception):
    """A send that did not go through; ``code`` is Twilio's error code when there is one."""

    def __init__(self, kind: ErrorKind, *, code: int | None = None, status: int | None = None):
        super().__init__(f"{kind} (code {code}, HTTP {status})")
        self.kind = kind
        self.code = code
        self.status = status


# Twilio's error codes (https://www.twilio.com/docs/api/errors), as PITFALLS.md lists them.
_OPTED_OUT = frozenset({21610})
_SMS_UNUSABLE = frozenset({21211, 21612, 21614, 30006, 30005})
_VOICE_UNUSABLE = frozenset({13223, 13224, 21215, 21217})
_RETRY = frozenset({20429, 30001, 21611, 30003, 20003, 20005, 30008, 30500})


def classify(code: int | None, status: int | None) -> ErrorKind:
    """What an error code or HTTP status from Twilio means for the notification."""
    if code in _OPTED_OUT:
        return ErrorKind.OPTED_OUT
    if code in _SMS_UNUSABLE:
        return ErrorKind.SMS_UNUSABLE
    if code in _VOICE_UNUSABLE:
        return ErrorKind.VOICE_UNUSABLE
    if code in _RETRY:
        return ErrorKind.RETRY
    # 401/403: credentials an operator will fix; 408, 429 and 5xx: Twilio asks us to wait.
    if status is None or status in (401, 403, 408, 429) or status >= 500:
        return ErrorKind.RETRY
    return ErrorKind.FATAL


class Sender(Protocol):
    """Sends SMS and places calls. Implementations raise :class:`SendError`."""

    @property
    def key(self) -> str:
        """The sender the rate limit applies to (a From number or Messaging Service)."""

    def send_sms(self, to: str, body: str, status_callback: str) -> str:
        """Hand one SMS to the provider; returns its SID."""

    def place_call(self, to: str, twiml_url: str, amd_callback: str, status_callback: str) -> str:
        """Start a call with asynchronous answering-machine detection; returns its SID."""

    def update_call(self, call_sid: str, twiml: str) -> None:
        """Replace what a call in progress does (after detection said who answered)."""


# What other packages ask of sms


def new_message_notice(
    *, patient_id: str | FromGate, thread_id: str
) -> tuple[Table, dict[str, Any]]:
    """The patient's notice of a new message in a thread, as a row for the caller to insert
    in its own transaction, with the message (carebridge.db.insert_together, or
    insert_gated, whose gate may supply the patient ID): it exists if and only if the
    message does. IDs only, never content. The caller hands the row on as it is: which
    table it goes to, and its columns, are sms's own."""
    return outbox.row(patient_id=patient_id, kind=outbox.NEW_MESSAGE, thread_id=thread_id)


# identity's ``SecurityNoticeTexter``: texts a security notice (a generic sentence and a
# "this wasn't me" link) to the patient's verified number, whatever its notification
# preferences, never to one that opted out (sms.security_notices).
SecurityNoticeTexter = OutboxSecurityNoticeTexter


# The same question folded into a caller's statement: (state, reason) subqueries for a
# thread's ID column, and the status they say (messaging's page of a thread).
notice_of_thread_columns = notice_status.latest_of_thread
notice_status_of = notice_status.status_of


def notice_status_of_thread(db: Session, thread_id: str) -> NoticeStatus | None:
    """How the patient's notice of the thread's latest new message went, for its care
    team (None: no notice was written), in the caller's transaction. UNREACHABLE is for
    the care team to act on: "patient could not be notified: no usable contact"."""
    return notice_status.of_thread(db, thread_id)


# What sms needs from outside


class TeamNames(Protocol):
    """The name of the care team of a thread, for a notice the patient's consent in force
    allows to name it (sms.consent). Asked when the notice is sent (never stored by sms,
    never logged), in the caller's transaction; None: no such thread."""

    def team_name_of_thread(self, db: Session, thread_id: str) -> str | None:
        """The care team's display name."""
