"""Staff operations on patient IDs: activation codes (issue, list), unlink, re-verify,
look-up.

Each takes a stated reason, kept on a ``staff_action`` row (or the activation code's row)
beside an audit event that carries IDs only. Reasons are explanations ("patient called
the help desk"), never personal data: the operations guide says so.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.keyring import Keyring, associated_data
from carebridge.runtime import Runtime
from identity import events
from identity.interfaces import PatientFollowers
from identity.models import ActivationCode, PatientLink, RosterMember, StaffAction, new_id

# Crockford's base32: no I, L, O or U. 12 characters = 60 bits.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 12
_READ_AS = str.maketrans({"I": "1", "L": "1", "O": "0"})
_PATIENT_ID = re.compile(r"pt_[A-Za-z0-9_-]{1,37}")
MAX_REASON = 500


class StaffError(Exception):
    """The operation was refused; the message is one line without personal data."""


class NotFoundError(StaffError):
    """No roster member has the patient ID (or no account the account ID)."""


class ConflictError(StaffError):
    """The patient is not in a state the operation applies to (linked, unlinked,
    ineligible)."""


def check_patient_id(patient_id: str) -> str:
    if not _PATIENT_ID.fullmatch(patient_id):
        raise StaffError("a patient ID looks like pt_ followed by letters, digits, '_' or '-'")
    return patient_id


def check_reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if not reason:
        raise StaffError("--reason must say why")
    if len(reason) > MAX_REASON:
        raise StaffError(f"--reason is at most {MAX_REASON} characters")
    return reason


def new_code() -> str:
    """A fresh code, grouped for reading aloud: XXXX-XXXX-XXXX."""
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, CODE_LENGTH, 4))


def normalise_code(code: str) -> str | None:
    """The code as stored (hashed): case, spaces and dashes don't matter; I and L read as
    1, O as 0 (Crockford). None if it cannot be a code."""
    cleaned = "".join(ch for ch in code.upper() if ch not in " -").translate(_READ_AS)
    if len(cleaned) != CODE_LENGTH or any(ch not in ALPHABET for ch in cleaned):
        return None
    return cleaned


def code_hash(keyring: Keyring, normalised: str) -> str:
    return keyring.lookup_hash("activation-code", normalised)


def _member(db: Session, patient_id: str) -> RosterMember:
    member = db.scalars(select(RosterMember).where(RosterMember.patient_id == patient_id)).first()
    if member is None:
        raise NotFoundError(f"no roster member has patient ID {patient_id}")
    return member


def _linked_account(db: Session, patient_id: str) -> str | None:
    return db.scalar(select(PatientLink.account_id).where(PatientLink.patient_id == patient_id))


def record(
    db: Session,
    *,
    actor: str,
    action: str,
    reason: str,
    patient_id: str | None = None,
    account_id: str | None = None,
) -> None:
    db.add(
        StaffAction(
            id=new_id("sa"),
            at=datetime.now(UTC),
            actor=actor,
            action=action,
            patient_id=patient_id,
            account_id=account_id,
            reason=reason,
        )
    )
    target = patient_id if patient_id is not None else f"account:{account_id}"
    audit.append(db, actor=actor, action=action, outcome=Outcome.ALLOWED, target=target)


def _end_unused_codes(db: Session, patient_id: str, now: datetime) -> None:
    db.execute(
        update(ActivationCode)
        .where(
            ActivationCode.patient_id == patient_id,
            ActivationCode.used_at.is_(None),
            ActivationCode.expires_at > now,
        )
        .values(expires_at=now)
    )


@dataclass(frozen=True)
class IssuedCode:
    code: str
    expires_at: datetime


def issue_code(rt: Runtime, patient_id: str, *, reason: str, actor: str = "operator") -> IssuedCode:
    """A new activation code for an eligible, unlinked patient; earlier unused codes end."""
    check_patient_id(patient_id)
    reason = check_reason(reason)
    code = new_code()
    now = datetime.now(UTC)
    expires_at = now + timedelta(days=rt.settings.activation_code_days)
    with transaction(rt.sessions) as db:
        member = _member(db, patient_id)
        if not member.eligible:
            raise ConflictError(f"patient {patient_id} is not eligible (no longer on the roster)")
        if _linked_account(db, patient_id) is not None:
            raise ConflictError(f"patient {patient_id} is already linked to an account")
        _end_unused_codes(db, patient_id, now)
        db.add(
            ActivationCode(
                id=new_id("ac"),
                patient_id=patient_id,
                code_hash=code_hash(rt.keyring, normalise_code(code) or ""),
                created_at=now,
                expires_at=expires_at,
                used_at=None,
                created_by=actor,
                reason=reason,
            )
        )
        audit.append(
            db,
            actor=actor,
            action="roster.activation_code.issue",
            outcome=Outcome.ALLOWED,
            target=patient_id,
        )
    return IssuedCode(code, expires_at)


def unlink(
    rt: Runtime,
    patient_id: str,
    *,
    reason: str,
    action: str = "roster.unlink",
    actor: str = "operator",
    followers: PatientFollowers,
) -> str:
    """Delete the patient's link to its account (the account keeps its sign-in); returns
    the account ID. ``roster.reverify`` also ends the patient's unused activation codes, so
    the account must verify again with DOB and SSN last 4 (or a newly issued code)."""
    check_patient_id(patient_id)
    reason = check_reason(reason)
    with transaction(rt.sessions) as db:
        _member(db, patient_id)
        account_id = _linked_account(db, patient_id)
        if account_id is None:
            raise ConflictError(f"patient {patient_id} is not linked to an account")
        # Told while the link still says which account's apps could read the patient.
        events.roster_links_ended(db, followers, [patient_id])
        db.execute(delete(PatientLink).where(PatientLink.patient_id == patient_id))
        if action == "roster.reverify":
            _end_unused_codes(db, patient_id, datetime.now(UTC))
        record(db, actor=actor, action=action, reason=reason, patient_id=patient_id)
    return account_id


CodeStatus = Literal["usable", "used", "expired", "voided"]


@dataclass(frozen=True)
class CodeState:
    """An activation code as staff see it: never the code (only its hash is stored)."""

    id: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    voided_at: datetime | None
    failures: int  # wrong dates of birth while it was usable, from any account
    created_by: str

    def state(self, now: datetime) -> CodeStatus:
        """used, voided (too many wrong dates of birth: issue a new one), expired (or
        ended by a newer code), or usable."""
        if self.used_at is not None:
            return "used"
        if self.voided_at is not None:
            return "voided"
        return "expired" if self.expires_at <= now else "usable"


def _codes(db: Session, patient_id: str) -> list[CodeState]:
    rows = db.scalars(
        select(ActivationCode)
        .where(ActivationCode.patient_id == patient_id)
        .order_by(ActivationCode.created_at.desc(), ActivationCode.id)
    )
    return [
        CodeState(
            id=row.id,
            created_at=row.created_at,
            expires_at=row.expires_at,
            used_at=None if row.used_at is None else row.used_at,
            voided_at=None if row.voided_at is None else row.voided_at,
            failures=row.failures,
            created_by=row.created_by,
        )
        for row in rows
    ]


def activation_codes(rt: Runtime, patient_id: str, *, actor: str = "operator") -> list[CodeState]:
    """The patient's activation codes, newest first, with their failures: whether one was
    voided, and why. Audited (``roster.activation_code.list``, IDs only)."""
    check_patient_id(patient_id)
    with transaction(rt.sessions) as db:
        _member(db, patient_id)
        codes = _codes(db, patient_id)
        audit.append(
            db,
            actor=actor,
            action="roster.activation_code.list",
            outcome=Outcome.ALLOWED,
            target=patient_id,
        )
    return codes


@dataclass(frozen=True)
class PatientDetails:
    patient_id: str
    source: str
    first_name: str
    last_name: str
    zip: str
    group: str
    member_id: str
    eligible: bool
    linked: bool
    codes: list[CodeState]


def lookup(rt: Runtime, patient_id: str, *, reason: str, actor: str = "operator") -> PatientDetails:
    """The roster's decrypted details of a patient (DOB and SSN last 4 are only hashes)."""
    check_patient_id(patient_id)
    reason = check_reason(reason)
    with transaction(rt.sessions) as db:
        member = _member(db, patient_id)
        linked = _linked_account(db, patient_id) is not None
        codes = _codes(db, patient_id)
        record(db, actor=actor, action="roster.lookup", reason=reason, patient_id=patient_id)
    plain = rt.keyring.decrypt(
        member.details_encrypted, associated_data("roster-member", member.id)
    )
    details: dict[str, str | None] = json.loads(plain)
    return PatientDetails(
        patient_id=patient_id,
        source=member.source,
        first_name=details.get("first_name") or "",
        last_name=details.get("last_name") or "",
        zip=details.get("zip") or "",
        group=details.get("group") or "",
        member_id=details.get("member_id") or "",
        eligible=member.eligible,
        linked=linked,
        codes=codes,
    )
