"""What a care team may know of a patient's notice of a thread: whether it went, waits,
or could not reach the patient.

The care team sees "could not be notified: no usable contact" (no number, an unverified
or unusable one, no verified e-mail address) so someone can call or write another way.
A notice the patient chose not to get (no channel, an opt-out) is their business: it
reads "not sent", like a failure, without saying why.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session, aliased

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
    # A notice always has a state, so never None.
    return status_of(notification.state, notification.reason) or NoticeStatus.NOT_SENT


def status_of(state: str | None, reason: str | None) -> NoticeStatus | None:
    """The status of a notice in that state, for that reason (None: no notice)."""
    if state is None:
        return None
    if state in _WAITING:
        return NoticeStatus.WAITING
    if state in _SENT:
        return NoticeStatus.SENT
    if state == "suppressed" and reason in UNREACHABLE:
        return NoticeStatus.UNREACHABLE
    return NoticeStatus.NOT_SENT


def latest_of_thread(thread_id: ColumnElement[str]) -> tuple[Any, Any]:
    """:func:`of_thread`'s question as two correlated subqueries, the latest notice's
    state and reason (a merged one's: those of the notice it went into), for a caller
    folding them into its own statement (messaging's page of a thread, one round trip);
    :func:`status_of` reads them."""
    latest, covering = aliased(Notification), aliased(Notification)
    query = (
        select(latest.state)
        .outerjoin(covering, (latest.state == "merged") & (covering.id == latest.merged_into))
        .where(latest.thread_id == thread_id, latest.kind == NEW_MESSAGE)
        .order_by(latest.created_at.desc())
        .limit(1)
    )
    state = func.coalesce(covering.state, latest.state)
    reason = case((covering.id.is_(None), latest.reason), else_=covering.reason)
    return (
        query.with_only_columns(state).scalar_subquery(),
        query.with_only_columns(reason).scalar_subquery(),
    )


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
