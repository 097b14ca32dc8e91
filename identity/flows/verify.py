"""Verifying who a signed-in account is: DOB + SSN last 4 against the eligibility roster,
and last name + ZIP as well while someone seems to be guessing.

``GET/POST /verify`` (page) and ``POST /api/v1/verify`` (JSON) share one service,
:func:`verify`. Only a finished sign-in (MFA done) without a patient link may verify.

1. Parse: a real date of birth in the past, exactly four SSN digits (a full nine-digit
   number is refused with a message that only the last four are needed; it is never
   echoed, stored or logged).
2. Count the attempt *first*, as a failure (identity/throttle.py), against the account,
   the client address, the DOB, the roster identity (DOB + SSN4 hash) and, when last name
   and ZIP are both given, the person (DOB + last name + ZIP hash). **Only the account's
   own counter refuses**: its 5th failure locks it until staff review ("contact
   support"), which hurts nobody but that account; its failures are never forgotten
   before a success or that review, so an account is 5 guesses in all. The shared
   counters never refuse, since a stranger can fill them; instead, once the DOB has
   ``CAREBRIDGE_VERIFY_STEP_UP_AFTER`` (3) failures within its 30 quiet days, or the
   address 10 within its quiet hour, the attempt is *stepped up*: it links only with the
   last name and ZIP as well. A stepped-up attempt without both is answered "we need your
   last name and ZIP as well" for every DOB/SSN4 pair, and touches no counter: the
   counting step itself finds the step-up (``Store.attempt_gated``), before anything is
   counted or the roster read, so it neither costs the account a failure (nor, counted
   and taken back, locks it for a moment) nor keeps the DOB or address stepped up. A
   roster identity or a person failed 10 times is an alert (log and metric), never a lock.
3. Match ``RosterHashes.identity(dob, ssn4)`` over the roster, narrowed by whichever of
   last name and ZIP were given. Exactly one eligible row, not linked to anyone → a
   ``PatientLink`` (its unique constraints settle concurrent claims: the loser gets the
   failure answer). Anything else without the tie-breaker → ask for the tie-breaker
   (``CAREBRIDGE_VERIFY_TIEBREAKER``: last name or ZIP), the same answer whether the pair
   is shared, unknown, ineligible or claimed; with it, the one failure answer. Every path
   that reads the roster does the same hashes and queries. Which of these answers comes
   depends on the pair only through "exactly one unclaimed match" (a success); the
   step-up depends on failure counts alone, which grow the same whether or not a pair
   exists.

Every attempt is audited (``identity.verify``, allowed/failed/denied, target the account
and on success the patient ID; never a value) and counted in
``carebridge_verification_total{outcome}``; each account lock in
``carebridge_verification_locks_total{kind="account"}``; each DOB or address reaching its
step-up threshold, and each roster identity or person failed 10 times, in
``carebridge_verification_alerts_total{kind}``. docs/threat-model.md has the arithmetic.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.http import openapi
from carebridge.http.forms import read_form, read_json
from carebridge.http.problems import Problem
from carebridge.http.templates import templates_for
from carebridge.i18n import N_
from carebridge.runtime import Runtime
from identity import authn, throttle
from identity.flows.account import is_verified
from identity.flows.signin import form_errors, form_text
from identity.models import PatientLink, RosterMember
from identity.roster import staff
from identity.roster.hashes import RosterHashes

log = logging.getLogger(__name__)
templates = templates_for(Path(__file__).resolve().parents[1] / "templates")

ACTION = "identity.verify"
VERIFICATIONS = Counter(
    "carebridge_verification_total",
    "Identity verification attempts by outcome (verified, failed, more_proof, locked)",
    ["outcome"],
)
LOCKS = Counter(
    "carebridge_verification_locks_total",
    "Verification locks set: an account after 5 failures, until staff review",
    ["kind"],
)
ALERTS = Counter(
    "carebridge_verification_alerts_total",
    "Shared verification counters reaching a threshold: a birth date or an address now "
    "asks for last name and ZIP as well (dob, address); one roster identity (DOB + SSN "
    "last 4) failed 10 times from any accounts (record); one person (DOB + last name + "
    "ZIP) failed 10 times from any accounts (person)",
    ["kind"],
)
# Failures from one address within its quiet hour before it steps up; failures against
# one roster identity, or one person, within 30 quiet days before the alert. A patient's
# own account fails at most 5 times, so 10 failures on a person are at least two accounts.
STEP_UP_ADDRESS = 10
RECORD_ALERT = 10
PERSON_ALERT = 10
# The log line of the person alert: no value, not even a hash (an operator finds the
# accounts in the audit log's failed identity.verify records around it).
PERSON_TARGETED = "verification person targeted"

FAILED = N_(
    "We couldn't verify your identity with those details. Check them and try again, "
    "or contact support."
)
NEED_MORE = N_("We need one more detail to find your record. Enter your details again, with it.")
MORE_PROOF = N_(
    "We need your last name and ZIP code as well to confirm it's you. Enter your details "
    "again, with both, as your employer, insurer or clinic has them. If that doesn't work "
    "(say you have moved or changed your name since), contact support and ask for an "
    "activation code."
)
# Where an activation code is redeemed, for API clients (the page links to /activate).
ACTIVATE_API = "/api/v1/activate"
LOCKED = N_(
    "We can't verify your identity online right now. Contact support and we'll help you finish."
)
ALREADY = N_("Your identity is already verified.")
ENTER_DOB = N_("Enter your date of birth.")
REAL_DOB = N_("Enter a real date of birth, like 1980-03-27.")
PAST_DOB = N_("Your date of birth must be in the past.")
ENTER_SSN4 = N_("Enter the last four digits of your Social Security number.")
SSN4_DIGITS = N_("Enter exactly 4 digits: the last four of your Social Security number.")
FULL_SSN = N_(
    "Enter only the last four digits of your Social Security number. We don't need the full number."
)
ENTER_LAST_NAME = N_("Enter your last name.")
ENTER_ZIP = N_("Enter your 5-digit ZIP code.")

_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_SSN4 = re.compile(r"\d{4}")
_FULL_SSN = re.compile(r"\d{3}[- ]?\d{2}[- ]?\d{4}")
_ZIP = re.compile(r"\d{5}(-\d{4})?")
MAX_LAST_NAME = 100

Tiebreaker = Literal["last_name", "zip"]


# Parsing


class NextPage(BaseModel):
    """The API's query parameter (described from here; read by ``next_path``)."""

    next: str | None = Field(
        default=None,
        description=(
            "A same-site path to go on to afterwards (a page that sent the patient here); "
            'echoed as ``next`` on success and on 409. Anything else (another site, "//host") '
            "is ignored."
        ),
    )


@openapi.component
class VerifyDetails(BaseModel):
    """Date of birth and SSN last 4; last name and/or ZIP when asked for them (``needs``)."""

    model_config = ConfigDict(extra="forbid")

    dob: date = Field(description="Date of birth, YYYY-MM-DD", json_schema_extra={"format": "date"})
    ssn4: str = Field(
        description="The last four digits of the Social Security number (never the full one)",
        json_schema_extra={"pattern": r"^\d{4}$"},
    )
    last_name: str = Field(
        default="",
        description=(
            "Last name as the roster has it: the tie-breaker when "
            "CAREBRIDGE_VERIFY_TIEBREAKER is last_name, and with zip when a 422 answer's "
            "`needs` lists both"
        ),
        json_schema_extra={"maxLength": MAX_LAST_NAME},
    )
    zip: str = Field(
        default="",
        description=(
            "The 5-digit ZIP code the roster has: the tie-breaker when "
            "CAREBRIDGE_VERIFY_TIEBREAKER is zip, and with last_name when `needs` lists both"
        ),
    )

    @field_validator("dob", mode="before")
    @classmethod
    def _dob(cls, value: object) -> date:
        if isinstance(value, date):
            return value
        text = value.strip() if isinstance(value, str) else ""
        if not text:
            raise PydanticCustomError("dob", ENTER_DOB)
        match = _ISO_DATE.fullmatch(text)
        if not match:
            raise PydanticCustomError("dob", REAL_DOB)
        try:
            dob = date(*(int(part) for part in match.groups()))
        except ValueError:
            raise PydanticCustomError("dob", REAL_DOB) from None
        if dob >= datetime.now(UTC).date():
            raise PydanticCustomError("dob", PAST_DOB)
        if dob.year < 1900:
            raise PydanticCustomError("dob", REAL_DOB)
        return dob

    @field_validator("ssn4", mode="before")
    @classmethod
    def _ssn4(cls, value: object) -> str:
        text = value.strip() if isinstance(value, str) else ""
        if _SSN4.fullmatch(text):
            return text
        if not text:
            raise PydanticCustomError("ssn4", ENTER_SSN4)
        if _FULL_SSN.fullmatch(text):
            raise PydanticCustomError("ssn4", FULL_SSN)
        raise PydanticCustomError("ssn4", SSN4_DIGITS)

    @field_validator("last_name")
    @classmethod
    def _last_name(cls, value: str) -> str:
        if len(value) > MAX_LAST_NAME:
            raise PydanticCustomError("last_name", f"Enter at most {MAX_LAST_NAME} characters.")
        return value.strip()

    @field_validator("zip")
    @classmethod
    def _zip(cls, value: str) -> str:
        text = value.strip()
        if text and not _ZIP.fullmatch(text):
            raise PydanticCustomError("zip", ENTER_ZIP)
        return text

    def tiebreaker(self, kind: Tiebreaker) -> str:
        return self.last_name if kind == "last_name" else self.zip

    @property
    def full(self) -> bool:
        """Last name and ZIP both given: what a stepped-up attempt needs."""
        return bool(self.last_name and self.zip)


@openapi.component
class Verified(BaseModel):
    """The account is a verified patient (its patient ID is for systems, not shown)."""

    status: Literal["verified"] = "verified"
    next: str | None = Field(
        default=None,
        description="Where to go on: the request's same-site `next` path, when it sent one",
    )


# The service


class Result(StrEnum):
    VERIFIED = "verified"
    NEED_TIEBREAKER = "need_tiebreaker"
    NEED_MORE_PROOF = "need_more_proof"  # stepped up: last name and ZIP as well
    FAILED = "failed"
    LOCKED = "locked"
    ALREADY = "already"


# What a stepped-up attempt needs besides the date of birth and SSN last 4.
MORE_PROOF_FIELDS: tuple[Tiebreaker, ...] = ("last_name", "zip")


@dataclass(frozen=True)
class _Row:
    id: str
    patient_id: str
    eligible: bool
    last_name_hash: str
    zip_hash: str
    linked_to: str | None


@dataclass(frozen=True)
class _Keys:
    """The counters an attempt is counted against."""

    account: throttle.Limit
    address: throttle.Limit
    record: throttle.Limit
    dob: throttle.Limit
    person: throttle.Limit | None  # only with last name and ZIP both given

    @property
    def shared(self) -> list[throttle.Limit]:
        """Every counter but the account's: what a success takes its attempt back from."""
        found = [self.address, self.record, self.dob]
        return found if self.person is None else [*found, self.person]


def _keys(
    runtime: Runtime,
    account_id: str,
    client_host: str | None,
    *,
    identity: str,
    dob: str,
    person: str | None,
) -> _Keys:
    def limit(policy: throttle.Policy, value: str) -> throttle.Limit:
        return throttle.Limit(policy, f"{policy.prefix}:{value}")

    return _Keys(
        account=limit(throttle.VERIFY_ACCOUNT, account_id),
        address=throttle.address_limit(runtime.keyring, client_host, throttle.VERIFY_ADDRESS),
        record=limit(throttle.VERIFY_RECORD, identity),
        dob=limit(throttle.VERIFY_DOB, dob),
        person=None if person is None else limit(throttle.VERIFY_PERSON, person),
    )


def _step_up_gates(runtime: Runtime, keys: _Keys, details: VerifyDetails) -> dict[str, int]:
    """Without both last name and ZIP, the failures at which the DOB or the address stops
    an attempt (stepped up: it is not counted, and nothing is tried). Failure counts only:
    whatever the roster holds, they grow the same."""
    if details.full:
        return {}
    return {
        keys.dob.key: runtime.settings.verify_step_up_after,
        keys.address.key: STEP_UP_ADDRESS,
    }


def _record_failure(
    runtime: Runtime,
    actor: str,
    *,
    counts: dict[str, int],
    keys: _Keys,
    rows: list[_Row],
    request_id: str | None,
) -> None:
    """Audit a failed attempt and the lock it set (audited, logged, counted); count the
    thresholds it reached."""
    with transaction(runtime.sessions) as db:
        audit.append(
            db,
            actor=actor,
            action=ACTION,
            outcome=Outcome.FAILED,
            target=actor,
            request_id=request_id,
        )
        account_locked = keys.account.policy.hard_locked(counts.get(keys.account.key, 0))
        if account_locked:
            audit.append(
                db,
                actor=actor,
                action=f"{ACTION}.lock",
                outcome=Outcome.DENIED,
                target=actor,
                request_id=request_id,
            )
    if account_locked:
        LOCKS.labels("account").inc()
    if counts[keys.dob.key] == runtime.settings.verify_step_up_after:
        ALERTS.labels("dob").inc()
    if counts[keys.address.key] == STEP_UP_ADDRESS:
        ALERTS.labels("address").inc()
    if keys.person is not None and counts[keys.person.key] == PERSON_ALERT:
        # Someone who knows a person's DOB, last name and ZIP is trying SSN last 4s from
        # more than one account (whether or not that person is on the roster: nothing
        # here read it).
        log.warning(PERSON_TARGETED)
        ALERTS.labels("person").inc()
    if counts[keys.record.key] == RECORD_ALERT and rows:
        # Row IDs only: an operator looks the record up from there. Someone holds this
        # person's DOB and SSN last 4 and keeps failing (wrong last name or ZIP, or the
        # record is claimed by another account).
        log.warning("roster record targeted", extra={"roster_member_ids": [r.id for r in rows]})
        ALERTS.labels("record").inc()


def verify(
    runtime: Runtime,
    account_id: str,
    details: VerifyDetails,
    *,
    client_host: str | None,
    request_id: str | None = None,
) -> Result:
    """Try to link the account to its roster record (run it in the thread pool)."""
    kind: Tiebreaker = runtime.settings.verify_tiebreaker
    hashes = RosterHashes(runtime.keyring)
    identity = hashes.identity(details.dob, details.ssn4)
    dob_hash = hashes.dob(details.dob)
    # Hashed on every path, given or not: the same work whatever the answer. The person
    # (counted only with both given) is a keyed hash of the three keyed hashes,
    # normalised as the roster's are.
    last_name_hash = hashes.last_name(details.last_name)
    zip_hash = hashes.zip(details.zip)
    person = runtime.keyring.lookup_hash("verify-person", f"{dob_hash}|{last_name_hash}|{zip_hash}")
    keys = _keys(
        runtime,
        account_id,
        client_host,
        identity=identity,
        dob=dob_hash,
        person=person if details.full else None,
    )
    actor = f"account:{account_id}"
    store = throttle.store_for(runtime.settings)

    with transaction(runtime.sessions) as db:
        if db.get(PatientLink, account_id) is not None:
            return Result.ALREADY
        counted = store.attempt_gated(
            db,
            [keys.account, *keys.shared],
            throttle.utcnow(),
            _step_up_gates(runtime, keys, details),
        )
        if isinstance(counted, throttle.Refused):
            # Locked: denied. Stepped up without last name and ZIP: nothing counted,
            # nothing tried, the answer asks for both whatever the pair.
            outcome = Outcome.DENIED if counted is throttle.Refused.LOCKED else Outcome.FAILED
            audit.append(
                db, actor=actor, action=ACTION, outcome=outcome, target=actor, request_id=request_id
            )
    if counted is throttle.Refused.LOCKED:
        VERIFICATIONS.labels("locked").inc()
        return Result.LOCKED
    if counted is throttle.Refused.GATED:
        VERIFICATIONS.labels("more_proof").inc()
        return Result.NEED_MORE_PROOF
    counts = counted

    query = (
        select(
            RosterMember.id,
            RosterMember.patient_id,
            RosterMember.eligible,
            RosterMember.last_name_hash,
            RosterMember.zip_hash,
            PatientLink.account_id,
        )
        .outerjoin(PatientLink, PatientLink.patient_id == RosterMember.patient_id)
        .where(RosterMember.identity_hash == identity)
    )
    linked: str | None = None
    rows: list[_Row] = []
    try:
        with transaction(runtime.sessions) as db:
            rows = [_Row(*row) for row in db.execute(query).all()]
            candidates = [
                row
                for row in rows
                if row.eligible
                and (
                    not details.last_name or hmac.compare_digest(row.last_name_hash, last_name_hash)
                )
                and (not details.zip or hmac.compare_digest(row.zip_hash, zip_hash))
            ]
            if len(candidates) == 1 and candidates[0].linked_to is None:
                linked = candidates[0].patient_id
                db.add(
                    PatientLink(
                        account_id=account_id, patient_id=linked, linked_at=throttle.utcnow()
                    )
                )
                db.flush()
                throttle.settle(
                    store, db, reset=[keys.account], refund=keys.shared, now=throttle.utcnow()
                )
                audit.append(
                    db,
                    actor=actor,
                    action=ACTION,
                    outcome=Outcome.ALLOWED,
                    target=f"{actor} patient:{linked}",
                    request_id=request_id,
                )
    except IntegrityError:
        # Someone else claimed the patient (or this account verified) at the same moment.
        linked = None
    if linked is not None:
        VERIFICATIONS.labels("verified").inc()
        return Result.VERIFIED

    _record_failure(runtime, actor, counts=counts, keys=keys, rows=rows, request_id=request_id)
    VERIFICATIONS.labels("failed").inc()
    return Result.FAILED if details.tiebreaker(kind) else Result.NEED_TIEBREAKER


def unlock(runtime: Runtime, account_id: str, *, reason: str, actor: str = "operator") -> int:
    """Staff clear an account's verification lock after review; returns the failures
    forgotten. Audited, the reason kept on a ``staff_action`` row."""
    reason = staff.check_reason(reason)
    store = throttle.store_for(runtime.settings)
    limit = throttle.Limit(
        throttle.VERIFY_ACCOUNT, f"{throttle.VERIFY_ACCOUNT.prefix}:{account_id}"
    )
    with transaction(runtime.sessions) as db:
        failures = store.state(db, limit, throttle.utcnow()).failures
        store.reset(db, limit)
        staff.record(
            db, actor=actor, action="identity.verify.unlock", reason=reason, account_id=account_id
        )
    return failures


# Pages


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


DEFAULT_NEXT = "/account"


def next_path(value: str | None) -> str:
    """Where to go after verifying: a same-site path only (an open redirect is an attack
    path), else the account page."""
    return authn.safe_next(value, DEFAULT_NEXT)


def _render(request: Request, context: dict[str, Any], status_code: int = 200) -> Response:
    """The page; ``asks`` names the extra fields to show (last name, ZIP), to which those
    that are always needed (``CAREBRIDGE_VERIFY_STEP_UP_AFTER=0``) are added."""
    runtime = _runtime(request)
    asks = set(context.get("asks", ()))
    if runtime.settings.verify_step_up_after == 0:
        asks.update(MORE_PROOF_FIELDS)
    base = {
        "errors": {},
        "next": DEFAULT_NEXT,
        "verified": False,
        "values": {"last_name": "", "zip": ""},
        "dob": {"day": "", "month": "", "year": ""},
    }
    shown = {**base, **context, "asks": [name for name in MORE_PROOF_FIELDS if name in asks]}
    response = templates.TemplateResponse(
        request, "identity/verify.html", shown, status_code=status_code
    )
    response.headers["Cache-Control"] = "no-store"
    return response


async def verify_page(request: Request) -> Response:
    session = await authn.require(request)
    next_to = next_path(request.query_params.get("next"))
    verified = await run_in_threadpool(is_verified, _runtime(request), session.account_id)
    if verified and next_to != DEFAULT_NEXT:
        # Verified meanwhile (another tab): straight on to where the patient was going.
        return RedirectResponse(next_to, status_code=303)
    return _render(request, {"verified": verified, "next": next_to})


def _page_dob(day: str, month: str, year: str) -> str:
    """Three fields as the one YYYY-MM-DD the model parses ("" if any is not digits)."""
    parts = (year.strip(), month.strip(), day.strip())
    if not all(part.isdigit() and len(part) <= 4 for part in parts):
        return "" if not any(parts) else "invalid"
    return f"{parts[0].zfill(4)}-{parts[1].zfill(2)}-{parts[2].zfill(2)}"


async def verify_submit(request: Request) -> Response:
    session = await authn.require(request)
    form = await read_form(request)
    runtime = _runtime(request)
    kind = runtime.settings.verify_tiebreaker
    next_to = next_path(form_text(form, "next"))
    shown = {name: form_text(form, f"dob_{name}")[:4] for name in ("day", "month", "year")}
    fields = {
        "dob": _page_dob(shown["day"], shown["month"], shown["year"]),
        "ssn4": form_text(form, "ssn4"),
        "last_name": form_text(form, "last_name")[: 4 * MAX_LAST_NAME],
        "zip": form_text(form, "zip")[:16],
    }
    # What was typed is shown again, fields the form had included; the SSN field is
    # never filled back in, whatever the answer.
    typed = [name for name in MORE_PROOF_FIELDS if form.get(name) is not None]
    context: dict[str, Any] = {
        "dob": shown,
        "values": {"last_name": fields["last_name"], "zip": fields["zip"]},
        "asks": typed,
        "next": next_to,
    }
    try:
        details = VerifyDetails.model_validate(fields)
    except ValidationError as exc:
        return _render(request, {**context, "errors": form_errors(exc)}, status_code=400)
    result = await run_in_threadpool(
        lambda: verify(
            runtime,
            session.account_id,
            details,
            client_host=request.client.host if request.client else None,
            request_id=getattr(request.state, "request_id", None),
        )
    )
    if result in (Result.VERIFIED, Result.ALREADY):
        return RedirectResponse(next_to, status_code=303)
    if result is Result.LOCKED:
        return _render(request, {**context, "errors": {"form": LOCKED}}, status_code=403)
    if result is Result.NEED_TIEBREAKER:
        asks = [*typed, kind]
        return _render(request, {**context, "asks": asks, "errors": {"form": NEED_MORE}}, 422)
    if result is Result.NEED_MORE_PROOF:
        asks = list(MORE_PROOF_FIELDS)
        return _render(request, {**context, "asks": asks, "errors": {"form": MORE_PROOF}}, 422)
    return _render(request, {**context, "errors": {"form": FAILED}}, status_code=422)


# JSON API


@openapi.operation(
    answers={200: openapi.Json(Verified, "Verified; the account is linked to its patient record")},
    security=openapi.session(),
    body=VerifyDetails,
    query=NextPage,
    problems=(403, 409, 422),
)
async def api_verify(request: Request) -> Response:
    """Link the account to its patient record by DOB and SSN last 4

    Needs a finished sign-in (second factor done) and an account not yet verified. "No
    such person", "ineligible", "already claimed" and "shared by several people" get one
    answer: 422 asking for the tie-breaker (extensions ``tiebreaker``: last_name or zip,
    and ``needs``: that field) when none was sent, the failure answer when one was.
    While the date of birth (or the client's address) has seen failures
    (CAREBRIDGE_VERIFY_STEP_UP_AFTER, default 3), last name and ZIP are needed as well:
    without both, the answer is 422 with ``needs: ["last_name", "zip"]`` whatever the
    date of birth and SSN last 4 are; send all four fields again. That answer does not
    count as a failure, and its ``activate`` names where an activation code from support
    is redeemed, for a patient whose last name or ZIP has changed since the roster was
    made. Five failures lock the account until staff review (403): an account's failures
    are never forgotten before that or a success, and nothing anyone else does locks it.

    - 400: A field is missing or malformed (a full SSN is refused here)
    - 401: Not signed in, or the second factor is missing
    - 403: Locked; contact support
    - 409: Already verified
    - 422: Not verified (one answer for every reason), or more details are needed: the
      fields to send again with the others are in ``needs``
    """
    session = await authn.require(request)
    details = await read_json(request, VerifyDetails)
    runtime = _runtime(request)
    asked = request.query_params.get("next")
    next_to = next_path(asked) if asked else None
    result = await run_in_threadpool(
        lambda: verify(
            runtime,
            session.account_id,
            details,
            client_host=request.client.host if request.client else None,
            request_id=getattr(request.state, "request_id", None),
        )
    )
    if result is Result.VERIFIED:
        return JSONResponse(Verified(next=next_to).model_dump(exclude_none=True))
    if result is Result.ALREADY:
        if next_to:
            raise Problem(409, ALREADY, next=next_to)
        raise Problem(409, ALREADY)
    if result is Result.LOCKED:
        raise Problem(403, LOCKED)
    if result is Result.NEED_TIEBREAKER:
        kind = runtime.settings.verify_tiebreaker
        raise Problem(422, NEED_MORE, tiebreaker=kind, needs=[kind])
    if result is Result.NEED_MORE_PROOF:
        raise Problem(422, MORE_PROOF, needs=list(MORE_PROOF_FIELDS), activate=ACTIVATE_API)
    raise Problem(422, FAILED)


def routes() -> list[BaseRoute]:
    return [
        Route("/verify", verify_page, methods=["GET"], name="verify"),
        Route("/verify", verify_submit, methods=["POST"], name="verify_submit"),
        Route("/api/v1/verify", api_verify, methods=["POST"], name="api_verify"),
    ]
