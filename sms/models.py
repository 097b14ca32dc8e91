"""sms's tables: the outbox, contact points, preferences, secure links, delivery attempts.

Nothing here holds a phone number in plaintext (encrypted under the keyring, bound to its
row; matched by a keyed lookup hash), a verification code or a link token (keyed hashes
only), or any message content (notifications carry IDs).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from carebridge.db import Base
from carebridge.utc import UtcDateTime


class Notification(Base):
    """One thing to tell a patient, written in the transaction of the event causing it.

    It carries IDs only (patient, thread): never content. ``decision`` and ``reason`` are
    the dispatcher's latest verdict (ARCHITECTURE.md invariant 6).

    States: pending (due at ``next_attempt_at``, or now when that is empty) → sending (an
    attempt is recorded and may have reached Twilio) → sent (Twilio accepted it) →
    delivered | undelivered; or suppressed (the dispatcher said no) | failed (a permanent
    error, or out of attempts) | merged (another notice of the same recipient covered it).
    A notice that cannot go now (quiet hours, a cap) stays pending until the dispatcher
    allows it; by e-mail, "sent" means handed to the outbox's e-mail channel.
    """

    __tablename__ = "notification"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # The patient the notice is about (its secure link is bound to them).
    patient_id: Mapped[str] = mapped_column(String(40), index=True)
    # Who is told (sms.interfaces.Recipient): None, the patient themself; an account ID,
    # someone who acts for the patient (a proxy, a later issue) and is told by their own
    # preferences. Caps, deferral and merging are counted per recipient.
    recipient_account_id: Mapped[str | None] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    # Indexed: a care team asks how the notice of a thread went (sms.notice_status).
    thread_id: Mapped[str | None] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    # For a phone verification code: the number being verified.
    contact_point_id: Mapped[str | None] = mapped_column(String(40))
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    decision: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))
    channel: Mapped[str | None] = mapped_column(String(8))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    attempt_id: Mapped[str | None] = mapped_column(String(40))
    # When it was first handed to Twilio: what the caps count.
    dispatched_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    delivery_status: Mapped[str | None] = mapped_column(String(16))
    error_code: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # How many new messages its notice counts: itself and those merged into it.
    covers: Mapped[int] = mapped_column(Integer, default=1)
    # State "merged": the notice that covered this one (it sent nothing of its own).
    merged_into: Mapped[str | None] = mapped_column(String(40))


class SendAttempt(Base):
    """One call to Twilio, recorded *before* it is made.

    Its ID travels in the status-callback URL, so a callback names the attempt even when
    the worker died before it could write down Twilio's SID.
    """

    __tablename__ = "send_attempt"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    notification_id: Mapped[str] = mapped_column(
        ForeignKey("notification.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(String(8))
    # sending → accepted | failed | unknown (timed out) | superseded (a later attempt took over)
    status: Mapped[str] = mapped_column(String(16))
    provider_sid: Mapped[str | None] = mapped_column(String(64), index=True)
    # Twilio's latest status for it (MessageStatus, CallStatus); it only ever moves
    # forward (sms.statuses), so a replayed or late callback changes nothing.
    provider_status: Mapped[str | None] = mapped_column(String(16))
    error_code: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Voice: what answered (AnsweredBy), for the operator.
    answered_by: Mapped[str | None] = mapped_column(String(24))


class ContactPoint(Base):
    """A patient's phone number (one per patient), usable only once verified by a code."""

    __tablename__ = "contact_point"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(40), unique=True)
    # E.164, encrypted under the keyring with (id, patient_id) as associated data.
    number_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    # Keyed lookup hash of the E.164 number: inbound webhooks find the row by it.
    number_hash: Mapped[str] = mapped_column(String(64), index=True)
    # The last digits, for the patient to recognise the number without decrypting it.
    last_digits: Mapped[str] = mapped_column(String(4))
    verified_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Twilio said the number cannot take SMS (21211/21612/21614/30006) or calls.
    sms_usable: Mapped[bool] = mapped_column(Boolean, default=True)
    voice_usable: Mapped[bool] = mapped_column(Boolean, default=True)
    unusable_code: Mapped[int | None] = mapped_column(Integer)
    # The one-time verification code: keyed hash, expiry, wrong tries, sends in a window.
    code_hash: Mapped[str | None] = mapped_column(String(64))
    code_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    code_failures: Mapped[int] = mapped_column(Integer, default=0)
    codes_sent: Mapped[int] = mapped_column(Integer, default=0)
    codes_window_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class OptOut(Base):
    """Our own SMS opt-out list, by number hash: a carrier STOP covers only one sender."""

    __tablename__ = "sms_opt_out"

    number_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    opted_out_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # keyword (STOP & co.), twilio (error 21610), operator
    source: Mapped[str] = mapped_column(String(16))


class InboundMessage(Base):
    """Every inbound SMS we accepted, kept for good by Twilio's MessageSid.

    Twilio's webhook signature has no timestamp and MessageSids are not ordered, so a
    captured request stays valid forever: a START replayed after a later STOP would turn
    texting back on, and a text that was no keyword ("CANCELED") could be split anew
    into one ("CANCEL"). A MessageSid seen here is already done, whatever it says now.
    Neither the text nor the sender's number is kept: the SID alone says nothing about
    the person.
    """

    __tablename__ = "sms_inbound_message"

    message_sid: Mapped[str] = mapped_column(String(34), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Preferences(Base):
    """How and when a patient may be notified. No row: the defaults (everything off)."""

    __tablename__ = "notification_preferences"

    patient_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    sms_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set by the patient's explicit opt-in; START/YES/UNSTOP only restore an earlier one.
    sms_opted_in_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    voice_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    voicemail_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # A generic notice by e-mail, to the account's verified address (off until chosen).
    email_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    time_zone: Mapped[str] = mapped_column(String(64))
    quiet_start: Mapped[str] = mapped_column(String(5))  # "HH:MM", local time
    quiet_end: Mapped[str] = mapped_column(String(5))
    daily_cap: Mapped[int] = mapped_column(Integer)
    weekly_cap: Mapped[int] = mapped_column(Integer)
    insecure_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    insecure_consent_version: Mapped[str | None] = mapped_column(String(32))
    insecure_consent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SecureLink(Base):
    """The /l/{token} link of one SMS: bound to a patient and a thread, stored hashed."""

    __tablename__ = "secure_link"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(40))
    thread_id: Mapped[str] = mapped_column(String(40))
    notification_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class LinkVisit(Base):
    """A link opened in one browser, remembered behind a short-lived cookie.

    The token leaves the address bar at once; the visit carries the link through sign-in.
    """

    __tablename__ = "secure_link_visit"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    cookie_hash: Mapped[str] = mapped_column(String(64), unique=True)
    link_id: Mapped[str] = mapped_column(ForeignKey("secure_link.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class SenderSlot(Base):
    """The next free send slot per sender: the rate limit every worker shares."""

    __tablename__ = "sms_sender_slot"

    sender: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_at: Mapped[datetime] = mapped_column(UtcDateTime)
