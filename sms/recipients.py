"""Who a notice is for: a recipient is a person with their own preferences and caps.

Today every notice goes to the patient the message is for. Someone who acts for a
patient (a proxy: a parent, a caregiver; a later issue) is an account of their own and
will be told by their own preferences, caps and contact points: the notification table
names the recipient's account beside the patient, and everything counted per person
(caps, deferral, merging) is counted per :class:`Recipient`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.sql import ColumnElement

from sms.models import Notification


@dataclass(frozen=True)
class Recipient:
    """The patient themself (``account_id`` None), or an account acting for them."""

    patient_id: str
    account_id: str | None = None

    @classmethod
    def of(cls, notification: Notification) -> Recipient:
        return cls(notification.patient_id, notification.recipient_account_id)

    def rows(self) -> ColumnElement[bool]:
        """The notifications of this recipient (a WHERE clause)."""
        account = Notification.recipient_account_id
        mine = account.is_(None) if self.account_id is None else account == self.account_id
        return (Notification.patient_id == self.patient_id) & mine
