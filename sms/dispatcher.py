"""The one dispatcher: every notification passes :func:`decide` before anything is sent.

It is a pure function of what the worker read in its transaction (the notification, the
patient's preferences, their contact point, how many notifications they already got) and
the current time, so every rule here is tested without a database or a clock. The worker
stores the decision and its reason on the notification (ARCHITECTURE.md invariant 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
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
    EMAIL = "email"  # a generic notice through carebridge.mail (the outbox's e-mail channel)


class Level(StrEnum):
    """What a notice may say beyond "you have a new secure message" (sms.consent)."""

    GENERIC = "generic"  # the default: nobody named
    TEAM_NAME = "team_name"  # the care team's name, under a consent to the text in force


class Reason(StrEnum):
    ALLOWED = "allowed"
    REQUESTED = "requested"  # a code the patient asked for: preferences do not apply
    QUIET_HOURS = "quiet_hours"
    NO_CHANNEL = "no_channel"  # the patient allowed no channel (SMS, calls, e-mail)
    NO_NUMBER = "no_number"
    NO_ADDRESS = "no_address"  # e-mail allowed, but no verified address to send it to
    UNVERIFIED_NUMBER = "unverified_number"
    NUMBER_UNUSABLE = "number_unusable"  # Twilio said it cannot be reached that way
    OPTED_OUT = "opted_out"  # STOP (ours or the carrier's 21610)
    CAP_REACHED = "cap_reached"  # deferred until the cap allows one more (then merged)
    CAP_ZERO = "cap_zero"  # the patient chose a cap of none at all
    MERGED = "merged"  # covered by another notice of the same recipient (one for many)
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
    email_enabled: bool = False


@dataclass(frozen=True)
class Contact:
    verified: bool
    sms_usable: bool
    voice_usable: bool
    opted_out: bool  # on our SMS opt-out list


@dataclass(frozen=True)
class Counts:
    """Notices already sent to this recipient: how many in the last day and week, and
    when each of the last week's went (oldest first), to find when a cap allows one more."""

    last_day: int
    last_week: int
    recent: tuple[datetime, ...] = ()


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: Reason
    channel: Channel | None = None
    until: datetime | None = None  # DEFER: when to decide again
    # SEND: the notice may name the care team (the consent level in force said so).
    names_team: bool = False


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


# Reasons that say the patient cannot be reached (as opposed to chose not to be): the
# care team is shown these ("could not be notified: no usable contact").
UNREACHABLE = frozenset(
    {Reason.NO_NUMBER, Reason.UNVERIFIED_NUMBER, Reason.NUMBER_UNUSABLE, Reason.NO_ADDRESS}
)
DAY, WEEK = timedelta(days=1), timedelta(days=7)


def _cap_frees_at(counts: Counts, cap: int, window: timedelta, now: datetime) -> datetime:
    """When fewer than ``cap`` notices lie in the rolling ``window``: the oldest one that
    must leave it has left."""
    inside = sorted(sent for sent in counts.recent if sent > now - window)
    if len(inside) < cap:  # counted elsewhere than the times given: wait a full window
        return now + window
    return inside[len(inside) - cap] + window


def _until_caps_allow(prefs: Prefs, counts: Counts, now: datetime) -> datetime | None:
    waits = []
    if counts.last_day >= prefs.daily_cap:
        waits.append(_cap_frees_at(counts, prefs.daily_cap, DAY, now))
    if counts.last_week >= prefs.weekly_cap:
        waits.append(_cap_frees_at(counts, prefs.weekly_cap, WEEK, now))
    return max(waits) if waits else None


def _phone_problem(prefs: Prefs, contact: Contact | None) -> Reason | None:
    """Why the phone channels the patient allowed cannot be used (None: one can)."""
    if contact is None:
        return Reason.NO_NUMBER
    if not contact.verified:
        return Reason.UNVERIFIED_NUMBER
    sms_ok = prefs.sms_enabled and contact.sms_usable and not contact.opted_out
    voice_ok = prefs.voice_enabled and contact.voice_usable
    if sms_ok or voice_ok:
        return None
    opted_out = prefs.sms_enabled and contact.sms_usable and contact.opted_out
    return Reason.OPTED_OUT if opted_out else Reason.NUMBER_UNUSABLE


def _channel(prefs: Prefs, contact: Contact | None, email: bool) -> Channel | Reason:
    """The channel a notice goes by (SMS, then a call, then e-mail), or why none can."""
    problems: list[Reason] = []
    if prefs.sms_enabled or prefs.voice_enabled:
        problem = _phone_problem(prefs, contact)
        if problem is None:
            assert contact is not None  # noqa: S101  (no problem: there is a number)
            sms_ok = prefs.sms_enabled and contact.sms_usable and not contact.opted_out
            return Channel.SMS if sms_ok else Channel.VOICE
        problems.append(problem)
    if prefs.email_enabled:
        if email:
            return Channel.EMAIL
        problems.append(Reason.NO_ADDRESS)
    # The patient's own choice (an opt-out) is named first; then what cannot reach them.
    return Reason.OPTED_OUT if Reason.OPTED_OUT in problems else problems[0]


def decide(  # noqa: PLR0911  (one rule, one return: read top to bottom)
    kind: str,
    prefs: Prefs,
    contact: Contact | None,
    counts: Counts,
    now: datetime,
    *,
    email: bool = False,
    level: Level = Level.GENERIC,
) -> Decision:
    """Send now on a channel, defer (quiet hours, a cap) or suppress with a reason.

    ``email``: the recipient has a verified e-mail address. A notice that cannot go now
    is deferred, never dropped: it is merged with the others of its recipient when it
    goes (sms.delivery). Only the patient's choice (no channel, an opt-out, a cap of
    none) or no usable contact suppresses one. ``level``: the insecure-channel consent
    in force when deciding (sms.consent.in_force); only TEAM_NAME lets the notice name
    the care team, and only a new-message notice ever names one.
    """
    if kind == PHONE_VERIFICATION:
        return _decide_code(contact)
    if kind != NEW_MESSAGE:
        return _suppress(Reason.UNKNOWN_KIND)
    if not (prefs.sms_enabled or prefs.voice_enabled or prefs.email_enabled):
        return _suppress(Reason.NO_CHANNEL)
    channel = _channel(prefs, contact, email)
    if isinstance(channel, Reason):
        return _suppress(channel)
    if prefs.daily_cap <= 0 or prefs.weekly_cap <= 0:
        return _suppress(Reason.CAP_ZERO)
    capped_until = _until_caps_allow(prefs, counts, now)
    if capped_until is not None:
        return Decision(Action.DEFER, Reason.CAP_REACHED, until=capped_until)
    until = quiet_until(
        now, prefs.time_zone, parse_hhmm(prefs.quiet_start), parse_hhmm(prefs.quiet_end)
    )
    if until is not None:
        return Decision(Action.DEFER, Reason.QUIET_HOURS, until=until)
    return Decision(Action.SEND, Reason.ALLOWED, channel, names_team=level is Level.TEAM_NAME)
