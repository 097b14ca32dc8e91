"""Contact points: a patient's phone number, verified by a one-time SMS code before use.

The code is made by the outbox worker when it sends the SMS (so it never rests in
plaintext anywhere) and kept as a keyed hash bound to the contact point and the number:
changing the number voids it. It expires after 10 minutes; 5 wrong tries void it; at
most 5 codes go out per patient per day, whatever numbers they try. That bounds
guessing at 25 tries a day against a million codes, and texting strangers (or premium
numbers) through us at 5 a day.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.keyring import Keyring
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from sms import outbox, phone
from sms.models import ContactPoint, Notification, OptOut, Preferences, SecureLink

CODE_TTL = timedelta(minutes=10)
MAX_CODE_FAILURES = 5
MAX_CODES_PER_DAY = 5
_CODE_WINDOW = timedelta(days=1)


class TooManyCodesError(Exception):
    """This number got its share of codes for today."""


class CodeResult(StrEnum):
    OK = "ok"
    WRONG = "wrong"
    EXPIRED = "expired"  # or voided by too many wrong tries: ask for a new one
    NO_CODE = "no_code"  # nothing to confirm (none sent yet, or no number)


@dataclass(frozen=True)
class ContactView:
    id: str
    last_digits: str
    verified: bool
    sms_usable: bool
    voice_usable: bool
    opted_out: bool
    code_pending: bool


# A removed number leaves its row behind, emptied: the code counters must outlive it, or
# removing and re-adding a number would buy unlimited code SMS (toll fraud, harassment).
REMOVED = ""
# Why a notification was not sent: its patient's account was deleted before it went.
ACCOUNT_DELETED = "account_deleted"


def _row_of(db: Session, patient_id: str) -> ContactPoint | None:
    query = select(ContactPoint).where(ContactPoint.patient_id == patient_id)
    return db.execute(query).scalar_one_or_none()


def of_patient(db: Session, patient_id: str) -> ContactPoint | None:
    """The patient's number, if they have one."""
    contact = _row_of(db, patient_id)
    return None if contact is None or contact.number_hash == REMOVED else contact


def is_opted_out(db: Session, number_hash: str) -> bool:
    return db.get(OptOut, number_hash) is not None


def view(
    db: Session, contact: ContactPoint | None, now: datetime | None = None
) -> ContactView | None:
    if contact is None:
        return None
    expires = contact.code_expires_at
    return ContactView(
        id=contact.id,
        last_digits=contact.last_digits,
        verified=contact.verified_at is not None,
        sms_usable=contact.sms_usable,
        voice_usable=contact.voice_usable,
        opted_out=is_opted_out(db, contact.number_hash),
        code_pending=contact.code_hash is not None
        and expires is not None
        and expires > (now or utcnow()),
    )


def current(runtime: Runtime, patient_id: str) -> ContactView | None:
    with runtime.sessions() as db:
        return view(db, of_patient(db, patient_id))


def number_of(keyring: Keyring, contact: ContactPoint) -> str:
    return phone.decrypt(
        keyring, contact.number_encrypted, contact_id=contact.id, patient_id=contact.patient_id
    )


def _count_code(contact: ContactPoint, now: datetime) -> None:
    window = contact.codes_window_at
    if window is None or now - window >= _CODE_WINDOW:
        contact.codes_window_at, contact.codes_sent = now, 0
    if contact.codes_sent >= MAX_CODES_PER_DAY:
        raise TooManyCodesError
    contact.codes_sent += 1


def _disable_channels(db: Session, patient_id: str) -> None:
    prefs = db.get(Preferences, patient_id)
    if prefs is not None:
        prefs.sms_enabled = prefs.voice_enabled = False


def set_number(
    runtime: Runtime, *, patient_id: str, actor: str, raw: str, request_id: str | None
) -> ContactView:
    """Register (or replace) the patient's number and send it a code.

    Raises phone.InvalidNumberError or TooManyCodesError. A new number is unverified, so SMS and
    calls are off until it is verified and the patient opts in again.
    """
    e164 = phone.normalize(raw, runtime.settings.sms_regions)
    keyring = runtime.keyring
    now = utcnow()
    with transaction(runtime.sessions) as db:
        contact = _row_of(db, patient_id)
        if contact is None:
            contact = ContactPoint(
                id=f"cp_{secrets.token_urlsafe(16)}",
                patient_id=patient_id,
                code_failures=0,
                codes_sent=0,
                created_at=now,
            )
            db.add(contact)
        _count_code(contact, now)
        contact.number_encrypted = phone.encrypt(
            keyring, e164, contact_id=contact.id, patient_id=patient_id
        )
        contact.number_hash = phone.number_hash(keyring, e164)
        contact.last_digits = e164[-4:]
        contact.verified_at = None
        contact.sms_usable = contact.voice_usable = True
        contact.unusable_code = None
        contact.code_hash = contact.code_expires_at = None
        contact.code_failures = 0
        contact.updated_at = now
        _disable_channels(db, patient_id)
        db.flush()
        outbox.enqueue_code(db, patient_id=patient_id, contact_point_id=contact.id)
        audit.append(
            db,
            actor=actor,
            action="sms.contact.set",
            outcome=Outcome.ALLOWED,
            target=f"contact:{contact.id}",
            request_id=request_id,
        )
        return _view_after(db, contact, now)


def _view_after(db: Session, contact: ContactPoint, now: datetime) -> ContactView:
    result = view(db, contact, now)
    assert result is not None  # noqa: S101
    return result


def resend_code(
    runtime: Runtime, *, patient_id: str, actor: str, request_id: str | None
) -> ContactView | None:
    """Another code for the unverified number (TooManyCodesError past today's share)."""
    now = utcnow()
    with transaction(runtime.sessions) as db:
        contact = of_patient(db, patient_id)
        if contact is None or contact.verified_at is not None:
            return view(db, contact, now)
        _count_code(contact, now)
        contact.updated_at = now
        outbox.enqueue_code(db, patient_id=patient_id, contact_point_id=contact.id)
        audit.append(
            db,
            actor=actor,
            action="sms.contact.code.resend",
            outcome=Outcome.ALLOWED,
            target=f"contact:{contact.id}",
            request_id=request_id,
        )
        return _view_after(db, contact, now)


def _code_hash(keyring: Keyring, contact: ContactPoint, code: str) -> str:
    return keyring.lookup_hash("sms-code", f"{contact.id}:{contact.number_hash}:{code}")


def issue_code(keyring: Keyring, contact: ContactPoint, now: datetime) -> str:
    """A fresh code for the SMS being sent (the worker calls this in its transaction)."""
    code = f"{secrets.randbelow(10**6):06d}"
    contact.code_hash = _code_hash(keyring, contact, code)
    contact.code_expires_at = now + CODE_TTL
    contact.code_failures = 0
    return code


def confirm_code(
    runtime: Runtime, *, patient_id: str, actor: str, code: str, request_id: str | None
) -> CodeResult:
    now = utcnow()
    typed = "".join(ch for ch in code if ch.isdigit())[:6]
    with transaction(runtime.sessions) as db:
        contact = of_patient(db, patient_id)
        if contact is None or contact.code_hash is None:
            result = CodeResult.NO_CODE
        elif (contact.code_expires_at or now) <= now:
            result = CodeResult.EXPIRED
        elif secrets.compare_digest(_code_hash(runtime.keyring, contact, typed), contact.code_hash):
            contact.verified_at = now
            contact.code_hash = contact.code_expires_at = None
            contact.code_failures = 0
            result = CodeResult.OK
        else:
            contact.code_failures += 1
            if contact.code_failures >= MAX_CODE_FAILURES:
                contact.code_hash = contact.code_expires_at = None
            result = CodeResult.WRONG
        if contact is not None:
            contact.updated_at = now
        audit.append(
            db,
            actor=actor,
            action="sms.contact.verify",
            outcome=Outcome.ALLOWED if result is CodeResult.OK else Outcome.DENIED,
            target=f"contact:{contact.id}" if contact else f"patient:{patient_id}",
            request_id=request_id,
        )
    return result


def remove(runtime: Runtime, *, patient_id: str, actor: str, request_id: str | None) -> bool:
    """Forget the patient's number (its ciphertext and hash); SMS and calls turn off."""
    with transaction(runtime.sessions) as db:
        contact = of_patient(db, patient_id)
        if contact is None:
            return False
        contact.number_encrypted, contact.number_hash, contact.last_digits = b"", REMOVED, ""
        contact.verified_at = contact.code_hash = contact.code_expires_at = None
        contact.updated_at = utcnow()
        _disable_channels(db, patient_id)
        audit.append(
            db,
            actor=actor,
            action="sms.contact.remove",
            outcome=Outcome.ALLOWED,
            target=f"contact:{contact.id}",
            request_id=request_id,
        )
    return True


def forget_patient(db: Session, patient_id: str) -> None:
    """The patient's account was deleted (identity's ``AccountDeleted``, wired in
    carebridge/wiring.py): in ``db``'s transaction, forget the number as :func:`remove`
    does (the row stays, emptied, for the sends that refer to it), delete the
    notification preferences (no row: everything off), end the SMS links and suppress
    the notifications not sent yet (``account_deleted``: nothing goes out after the
    deletion). The patient ID itself stays, and the opt-out list (kept by number, not by
    person); a notification already being sent is left to its attempt."""
    contact = of_patient(db, patient_id)
    if contact is not None:
        contact.number_encrypted, contact.number_hash, contact.last_digits = b"", REMOVED, ""
        contact.verified_at = contact.code_hash = contact.code_expires_at = None
        contact.updated_at = utcnow()
    db.execute(delete(Preferences).where(Preferences.patient_id == patient_id))
    db.execute(delete(SecureLink).where(SecureLink.patient_id == patient_id))
    db.execute(
        update(Notification)
        .where(Notification.patient_id == patient_id, Notification.state == "pending")
        .values(
            state="suppressed",
            reason=ACCOUNT_DELETED,
            next_attempt_at=None,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
