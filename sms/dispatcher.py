"""The one dispatcher: every notification passes :func:`decide` before anything is sent.

It is a pure function of what the worker read in its transaction (the notification, the
patient's preferences, their contact point, how many notifications they already got) and
the current time, so every rule here is tested without a database or a clock. The worker
stores the decision and its reason on the notification (ARCHITECTURE.md invariant 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sms.quiet_hours import parse_hhmm, quiet_until

NEW_MESSAGE = "new_message"
PHONE_VERIFICATION = "phone_verification"


class Action(StrEnum):
    SEND = "send"
    DEFER = "defer"
    SUPPRESS = "suppress"


class Channel(StrEnum):
    SMS = "sms"
    VOICE = "voice"


class Reason(StrEnum):
    ALLOWED = "allowed"
    REQUESTED = "requested"  # a code the patient asked for: preferences do not apply
    QUIET_HOURS = "quiet_hours"
    NO_CHANNEL = "no_channel"  # the patient allowed neither SMS nor calls
    NO_NUMBER = "no_number"
    UNVERIFIED_NUMBER = "unverified_number"
    NUMBER_UNUSABLE = "number_unusable"  # Twilio said it cannot be reached that way
    OPTED_OUT = "opted_out"  # STOP (ours or the carrier's 21610)
    CAP_REACHED = "cap_reached"
    UNKNOWN_KIND = "unknown_kind"


@dataclass(frozen=True)
class Prefs:
    """The preferences the dispatcher reads (the defaults when the patient set none)."""

    sms_enabled: bool
    voice_enabled: bool
    time_zone: str
    quiet_start: str
    quiet_end: str
    daily_cap: int
    weekly_cap: int


@dataclass(frozen=True)
class Contact:
    verified: bool
    sms_usable: bool
    voice_usable: bool
    opted_out: bool  # on our SMS opt-out list


@dataclass(frozen=True)
class Counts:
    """Notifications already handed to Twilio for this patient."""

    last_day: int
    last_week: int


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: Reason
    channel: Channel | None = None
    until: datetime | None = None  # DEFER: when to decide again


def _suppress(reason: Reason) -> Decision:
    return Decision(Action.SUPPRESS, reason)


def _decide_code(contact: Contact | None) -> Decision:
    # The patient is verifying this number right now: quiet hours and caps do not apply,
    # but an opted-out or unreachable number is still not texted.
    if contact is None:
        return _suppress(Reason.NO_NUMBER)
    if not contact.sms_usable:
        return _suppress(Reason.NUMBER_UNUSABLE)
    if contact.opted_out:
        return _suppress(Reason.OPTED_OUT)
    return Decision(Action.SEND, Reason.REQUESTED, Channel.SMS)


def decide(  # noqa: PLR0911  (one rule, one return: read top to bottom)
    kind: str, prefs: Prefs, contact: Contact | None, counts: Counts, now: datetime
) -> Decision:
    """Send now on a channel, defer to the end of quiet hours, or suppress with a reason."""
    if kind == PHONE_VERIFICATION:
        return _decide_code(contact)
    if kind != NEW_MESSAGE:
        return _suppress(Reason.UNKNOWN_KIND)
    if not (prefs.sms_enabled or prefs.voice_enabled):
        return _suppress(Reason.NO_CHANNEL)
    if contact is None:
        return _suppress(Reason.NO_NUMBER)
    if not contact.verified:
        return _suppress(Reason.UNVERIFIED_NUMBER)
    sms_ok = prefs.sms_enabled and contact.sms_usable and not contact.opted_out
    voice_ok = prefs.voice_enabled and contact.voice_usable
    if not (sms_ok or voice_ok):
        # Say why the channel the patient wanted cannot be used.
        opted_out = prefs.sms_enabled and contact.sms_usable and contact.opted_out
        return _suppress(Reason.OPTED_OUT if opted_out else Reason.NUMBER_UNUSABLE)
    if counts.last_day >= prefs.daily_cap or counts.last_week >= prefs.weekly_cap:
        return _suppress(Reason.CAP_REACHED)
    until = quiet_until(
        now, prefs.time_zone, parse_hhmm(prefs.quiet_start), parse_hhmm(prefs.quiet_end)
    )
    if until is not None:
        return Decision(Action.DEFER, Reason.QUIET_HOURS, until=until)
    return Decision(Action.SEND, Reason.ALLOWED, Channel.SMS if sms_ok else Channel.VOICE)
