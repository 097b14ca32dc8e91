"""Who is a patient: the account's link to an opaque patient ID, for pages and other parts.

Messaging and notifications ask here (through :mod:`identity.interfaces`) rather than
reading ``patient_link`` themselves; every answer is a value, never a row.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request

from carebridge.http.problems import Problem, wants_json
from carebridge.keyring import Keyring
from carebridge.runtime import Runtime
from identity import accounts, authn
from identity.models import Account, LoginIdentifier, PatientLink, RosterMember


class Eligibility(StrEnum):
    ELIGIBLE = "eligible"
    # On the roster, but terminated or missing from a full re-import.
    INELIGIBLE = "ineligible"
    UNKNOWN = "unknown"  # no such patient


def eligibility(db: Session, patient_id: str) -> Eligibility:
    """Whether a patient ID is on the roster and eligible now (one indexed lookup)."""
    query = select(RosterMember.eligible).where(RosterMember.patient_id == patient_id)
    eligible = db.execute(query).scalar_one_or_none()
    if eligible is None:
        return Eligibility.UNKNOWN
    return Eligibility.ELIGIBLE if eligible else Eligibility.INELIGIBLE


def roster_patient_ids(db: Session, source: str) -> frozenset[str]:
    """The patient IDs of a roster source's members eligible now: what a care team fed
    by that source has as its patients (the composition root passes them to messaging
    after an import; identity knows nothing of care teams)."""
    query = select(RosterMember.patient_id).where(
        RosterMember.source == source, RosterMember.eligible.is_(True)
    )
    return frozenset(db.scalars(query))


def patient_id_of(db: Session, account_id: str) -> str | None:
    link = db.get(PatientLink, account_id)
    return link.patient_id if link is not None else None


def account_of(db: Session, patient_id: str) -> str | None:
    query = select(PatientLink.account_id).where(PatientLink.patient_id == patient_id)
    return db.execute(query).scalar_one_or_none()


def verified_email_of_patient(db: Session, keyring: Keyring, patient_id: str) -> str | None:
    """The e-mail address of the patient's active account, if its owner proved they read
    it (None otherwise): where a notice by e-mail may go. The address only, for the
    outbox to seal; never logged."""
    query = (
        select(PatientLink.account_id)
        .join(Account, Account.id == PatientLink.account_id)
        .join(LoginIdentifier, LoginIdentifier.account_id == PatientLink.account_id)
        .where(
            PatientLink.patient_id == patient_id,
            Account.status == accounts.ACTIVE,
            LoginIdentifier.verified_at.is_not(None),
        )
    )
    account_id = db.execute(query).scalar_one_or_none()
    return accounts.login_of(db, keyring, account_id) if account_id is not None else None


class SignedInPatient(NamedTuple):
    """Who is signed in on a patient's page: the account, and its verified patient ID."""

    account_id: str
    patient_id: str


async def require_account(request: Request) -> str:
    """The account ID of the request's finished sign-in (MFA done).

    A page is redirected to the step still missing and back; an API call gets a 401.
    """
    return (await authn.require(request)).account_id


async def require_patient(request: Request, *, step_up: bool = False) -> SignedInPatient:
    """The signed-in (MFA done) account and its patient ID.

    An account that has not verified yet is sent to /verify (a page) and back, or gets a
    403 problem (an API call). With ``step_up`` (a sensitive operation: exporting every
    message), the second factor must have been proved in the last few minutes too
    (identity.authn, "Step-up"): a page is sent to prove it and back, an API call gets a
    403 problem.
    """
    session = await authn.require(request)
    if step_up:
        await authn.require_step_up(request, session)
    account_id = session.account_id
    runtime: Runtime = request.app.state.runtime

    def lookup() -> str | None:
        with runtime.sessions() as db:
            return patient_id_of(db, account_id)

    patient_id = await run_in_threadpool(lookup)
    if patient_id is not None:
        return SignedInPatient(account_id, patient_id)
    if wants_json(request):
        raise Problem(403, "Verify your identity first.", verify_url="/verify")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    raise HTTPException(303, headers={"Location": f"/verify?{urlencode({'next': target})}"})
