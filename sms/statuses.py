"""Twilio's delivery statuses, and which may follow which: a callback never moves back.

Twilio signs its callbacks without a timestamp and does not promise their order, so a
late or replayed one (``failed`` after ``delivered``, ``sent`` after ``delivered``) must
change nothing. Each attempt keeps Twilio's latest status; a callback is applied only if
its status is a step forward from it, per these tables (Twilio's documented order:
queued/accepted/scheduled → sending → sent → delivered | undelivered | failed, ``read``
after ``delivered``; a call: queued → initiated → ringing → in-progress → completed, or
busy | no-answer | failed | canceled). A status may skip steps (Twilio calls back only on
some), never go back; the same status again is a repeat, already done. A status not in
the tables (``receiving``, a typo) is never a step.
"""

from __future__ import annotations

from collections.abc import Mapping

from sms.dispatcher import Channel

_DELIVERY = frozenset({"delivered", "undelivered", "failed", "read"})
_MESSAGE_SENT = _DELIVERY | {"sent"}
_MESSAGE_SENDING = _MESSAGE_SENT | {"sending"}
_MESSAGE_QUEUED = _MESSAGE_SENDING | {"canceled"}

# From each status, the statuses that may come after it; a final status is not a key.
MESSAGE_STEPS: Mapping[str | None, frozenset[str]] = {
    None: _MESSAGE_QUEUED | {"accepted", "scheduled", "queued"},
    "accepted": _MESSAGE_QUEUED | {"scheduled", "queued"},
    "scheduled": _MESSAGE_QUEUED | {"queued"},
    "queued": _MESSAGE_QUEUED,
    "sending": _MESSAGE_SENT,
    "sent": _DELIVERY,
    "delivered": frozenset({"read"}),
}

_CALL_ENDED = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
_CALL_RINGING = _CALL_ENDED | {"in-progress"}

CALL_STEPS: Mapping[str | None, frozenset[str]] = {
    None: _CALL_RINGING | {"queued", "initiated", "ringing"},
    "queued": _CALL_RINGING | {"initiated", "ringing"},
    "initiated": _CALL_RINGING | {"ringing"},
    "ringing": _CALL_RINGING,
    "in-progress": frozenset({"completed", "failed"}),
}


def is_step(channel: str, current: str | None, status: str) -> bool:
    """Whether ``status`` may follow ``current`` (None: nothing heard yet) on ``channel``."""
    steps = CALL_STEPS if channel == Channel.VOICE else MESSAGE_STEPS
    return status in steps.get(current, frozenset())
