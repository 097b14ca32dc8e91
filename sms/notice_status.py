"""What a care team may know of a patient's notice of a thread: whether it went, waits,
or could not reach the patient.

The care team sees "could not be notified: no usable contact" (no number, an unverified
or unusable one, no verified e-mail address) so someone can call or write another way.
A notice the patient chose not to get (no channel, an opt-out) is their business: it
reads "not sent", like a failure, without saying why.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from sms.dispatcher import NEW_MESSAGE, UNREACHABLE
from sms.models import Notification


class NoticeStatus(StrEnum):
    WAITING = "waiting"  # due, or deferred by quiet hours or a cap: it will go
    SENT = "sent"  # handed to Twilio or the e-mail channel (or delivered)
    UNREACHABLE = "unreachable"  # the patient could not be notified: no usable contact
    NOT_SENT = "not_sent"  # the patient's choice, or a delivery that failed for good


_WAITING = frozenset({"pending", "sending"})
_SENT = frozenset({"sent", "delivered"})


def _status(notification: Notification) -> NoticeStatus:
    if notification.state in _WAITING:
        return NoticeStatus.WAITING
    if notification.state in _SENT:
        return NoticeStatus.SENT
    if notification.state == "suppressed" and notification.reason in UNREACHABLE:
        return NoticeStatus.UNREACHABLE
    return NoticeStatus.NOT_SENT


def of_thread(db: Session, thread_id: str) -> NoticeStatus | None:
    """The status of the latest new-message notice of a thread (None: there was none),
    in the caller's transaction. A notice merged into another has that one's status."""
    query = (
        select(Notification)
        .where(Notification.thread_id == thread_id, Notification.kind == NEW_MESSAGE)
        .order_by(Notification.created_at.desc())
        .limit(1)
    )
    latest = db.scalars(query).first()
    if latest is None:
        return None
    if latest.state == "merged" and latest.merged_into is not None:
        covering = db.get(Notification, latest.merged_into)
        latest = covering or latest
    return _status(latest)
