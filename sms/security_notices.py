"""Security notices identity asks to text (identity's ``SecurityNoticeTexter``).

A security notice (an account recovery waiting to replace the second factor, or one
that did) goes to the patient's verified number whatever their message-notification
preferences say: those are about care-team messages, and a takeover in progress is
exactly when the owner must hear of it. The law still rules: nothing to a number that
sent STOP (checked when queued and again when sent), nor to one Twilio said cannot take
SMS. Like a one-time code, it is a row of the channel-neutral outbox (channel ``sms``),
its number and link sealed under the keyring in the caller's transaction: texted if and
only if what it announces commits (by :func:`sms.codes.deliver`), and only while the
number is still the patient's verified one (:func:`still_theirs`): changed, removed, or
forgotten with the account since it was queued (a text waiting out a Twilio outage), the
notice goes to nobody, never to whoever holds that number now. The wording
(:func:`sms.texts.security_notice_sms`)
is one generic sentence and the link: nothing naming a condition, a person or a care
team.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from carebridge import outbox
from carebridge.runtime import Runtime
from sms import contacts, phone
from sms.models import ContactPoint

CHANNEL = "sms"  # the outbox channel sms's worker handles (sms.codes.CHANNEL)
SECURITY_NOTICE = "security_notice"


class OutboxSecurityNoticeTexter:
    """Queues a security notice for a patient's verified number in the caller's
    transaction; returns the outbox ID, or None when the patient has no number that may
    take it (none, unverified, unusable for SMS, or opted out)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def send_security_notice(self, db: Session, *, patient_id: str, link: str) -> str | None:
        contact = contacts.of_patient(db, patient_id)
        if (
            contact is None
            or contact.verified_at is None
            or not contact.sms_usable
            or contacts.is_opted_out(db, contact.number_hash)
        ):
            return None
        keyring = self._runtime.keyring
        return outbox.enqueue(
            db,
            channel=CHANNEL,
            kind=SECURITY_NOTICE,
            # The contact point's ID (no number, no person): what delivery checks against.
            payload={"contact": contact.id},
            content={"to": contacts.number_of(keyring, contact), "link": link},
            keyring=keyring,
        )


def still_theirs(db: Session, runtime: Runtime, message: outbox.Message) -> bool:
    """Whether the notice's sealed number is still its contact point's verified number."""
    contact_id = message.payload.get("contact")
    if contact_id is None:  # queued before notices named their contact point
        return True
    contact = db.get(ContactPoint, contact_id)
    return (
        contact is not None
        and contact.verified_at is not None
        and contact.number_hash == phone.number_hash(runtime.keyring, message.content["to"])
    )
