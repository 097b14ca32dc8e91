"""Redeeming an activation code: a signed-in account becomes a patient with a code staff
issued (``carebridge roster activation-code``) and the patient's date of birth.

A fully signed-in account without a patient link posts the code and DOB. The code must
exist, be unused and unexpired, its patient eligible and not linked to anyone, and the
DOB's keyed hash must equal the roster row's: then the account is linked and the code
used, in one transaction. The code is taken with a conditional ``UPDATE ... WHERE used_at
IS NULL``, so two people redeeming one code at once get exactly one link.

Every failure gets the same answer. Attempts are counted before the check, like password
guesses (identity/throttle.py): per account (:data:`ACCOUNT`: 5 failures lock activation
until staff clear it with ``carebridge roster activation-unlock``) and per client address
(:data:`ADDRESS`). The code counts its own wrong dates of birth too, from whichever
accounts and addresses they come (``activation_code.failures``): at
``CAREBRIDGE_ACTIVATION_CODE_MAX_FAILURES`` (5) it is voided for good, so its date of
birth cannot be tried from account after account. A voided code answers like any wrong
one; staff see it in ``carebridge roster lookup`` and the admin API, and issue a new one.
Each attempt is an audit event without values (a failure against a usable code names the
code's ID; a voiding is ``identity.activate.void``), and is counted in
``carebridge_activation_total{outcome}`` (linked, failed, locked) and
``carebridge_activation_codes_voided_total``. Every failure does the same work, so its
timing tells nothing either.

``GET/POST /activate`` (page) and ``POST /api/v1/activate`` (JSON, bearer session).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from prometheus_client import Counter
from pydantic import BaseModel, Field
from sqlalchemy import case, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
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
from identity.models import ActivationCode, PatientLink, RosterMember
from identity.roster import staff
from identity.roster.hashes import RosterHashes

templates = templates_for(Path(__file__).resolve().parents[1] / "templates")

ACCOUNT = throttle.ACTIVATE_ACCOUNT
ADDRESS = throttle.ACTIVATE_ADDRESS
ACTIVATIONS = Counter(
    "carebridge_activation_total",
    "Activation code redemptions by outcome (linked, failed, locked)",
    ["outcome"],
)
VOIDED = Counter(
    "carebridge_activation_codes_voided_total",
    "Activation codes voided after too many wrong dates of birth (someone tried to guess)",
)

FAILED = N_(
    "That code and date of birth did not match an activation code we can use. Check "
    "both, or ask us for a new code."
)
LOCKED = N_(
    "Activation is locked for this account after too many attempts. Contact us to unlock it."
)
ALREADY = N_("This account is already linked to a patient record.")
CODE_FORMAT = N_("Enter the activation code, like ABCD-EFGH-JKMN.")
DOB_FORMAT = N_("Enter your date of birth, like 1980-12-31.")

_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_US = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")


def parse_dob(text: str) -> date | None:
    """YYYY-MM-DD (what a date input sends) or MM/DD/YYYY; None if it is not a real date."""
    text = text.strip()
    iso, us = _ISO.fullmatch(text), _US.fullmatch(text)
    try:
        if iso:
            return date(int(iso[1]), int(iso[2]), int(iso[3]))
        if us:
            return date(int(us[3]), int(us[1]), int(us[2]))
    except ValueError:
        return None
    return None


@openapi.component
class Activation(BaseModel):
    """An activation code from staff and the patient's date of birth."""

    code: str = Field(min_length=1, max_length=64, examples=["ABCD-EFGH-JKMN"])
    dob: str = Field(
        min_length=1, max_length=20, description="YYYY-MM-DD or MM/DD/YYYY", examples=["1980-12-31"]
    )


@openapi.component
class Activated(BaseModel):
    """The account is linked to its patient ID."""

    patient_id: str


class Status(StrEnum):
    LINKED = "linked"
    FAILED = "failed"
    LOCKED = "locked"
    ALREADY = "already"  # this account already has a patient link


@dataclass(frozen=True)
class Result:
    status: Status
    patient_id: str = ""
    voided: bool = False  # this failure voided the code (never shown to the person trying)


def account_limit(account_id: str) -> throttle.Limit:
    return throttle.Limit(ACCOUNT, f"{ACCOUNT.prefix}:{account_id}")


# What an unknown (or malformed) code is compared with: the length of a real DOB hash, so
# the comparison costs the same; no DOB hashes to it.
_NO_DOB_HASH = "0" * 64
# Looked up for a code that cannot be one: no code normalises to it, so nothing matches.
_NOT_A_CODE = "-"


class _Found(NamedTuple):
    row: ActivationCode | None  # the code's row if it may link now
    code_hash: str  # what the code was looked up by
    wrong_dob: bool


def _usable_code(
    db: Session, runtime: Runtime, code: str, dob: date | None, now: datetime
) -> _Found:
    """The code's row if it may link now, the code's lookup hash, and whether the date of
    birth failed to match.

    Every path does the same work, so the time taken says nothing about why a code
    failed: both hashes, one query (the code, its roster row and any link to its patient
    together), one constant-time comparison, whether the code is malformed, unknown,
    used, voided, expired, for an ineligible or already linked patient, or the DOB is
    wrong.
    """
    normalised = staff.normalise_code(code)
    lookup = staff.code_hash(runtime.keyring, normalised or _NOT_A_CODE)
    dob_hash = RosterHashes(runtime.keyring).dob(dob or date(1, 1, 1))
    found = db.execute(
        select(ActivationCode, RosterMember.dob_hash, RosterMember.eligible, PatientLink.account_id)
        .join(RosterMember, RosterMember.patient_id == ActivationCode.patient_id)
        .outerjoin(PatientLink, PatientLink.patient_id == ActivationCode.patient_id)
        .where(ActivationCode.code_hash == lookup)
    ).first()
    stored_dob_hash = found[1] if found is not None else _NO_DOB_HASH
    matches = secrets.compare_digest(dob_hash, stored_dob_hash)
    if found is None or normalised is None or dob is None:
        return _Found(None, lookup, not matches)
    row: ActivationCode = found[0]
    eligible, linked = found[2], found[3]
    expires_at = row.expires_at
    spent = row.used_at is not None or row.voided_at is not None or expires_at <= now
    if not matches or spent or not eligible or linked:
        return _Found(None, lookup, not matches)
    return _Found(row, lookup, wrong_dob=False)


@dataclass(frozen=True)
class _Counted:
    code_id: str
    patient_id: str
    voided: bool


def _count_failure(db: Session, found: _Found, now: datetime, limit: int) -> _Counted | None:
    """One more failure on the code if it is still usable and the date of birth was wrong;
    voided at ``limit``.

    One statement on every failed attempt, whether or not such a code exists (a code
    that cannot be one is looked up as a hash no code has) and whatever failed (the
    wrong date of birth is a bound value): every failure does the same work. Atomic, so
    concurrent failures from many accounts count exactly.
    """
    failures = ActivationCode.failures
    counted = db.execute(
        update(ActivationCode)
        .where(
            ActivationCode.code_hash == found.code_hash,
            ActivationCode.used_at.is_(None),
            ActivationCode.voided_at.is_(None),
            ActivationCode.expires_at > now,
            literal(found.wrong_dob),
        )
        .values(failures=failures + 1, voided_at=case((failures + 1 >= limit, now), else_=None))
        .returning(ActivationCode.id, ActivationCode.patient_id, ActivationCode.voided_at)
        .execution_options(synchronize_session=False)
    ).first()
    if counted is None:
        return None
    return _Counted(counted[0], counted[1], counted[2] is not None)


def _link(db: Session, row: ActivationCode, account_id: str, now: datetime) -> bool:
    """Use the code and link the account, or neither (someone else was first)."""
    try:
        with db.begin_nested():
            taken = db.execute(
                update(ActivationCode)
                .where(
                    ActivationCode.id == row.id,
                    ActivationCode.used_at.is_(None),
                    ActivationCode.voided_at.is_(None),
                )
                .values(used_at=now)
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return False
            db.add(PatientLink(account_id=account_id, patient_id=row.patient_id, linked_at=now))
            db.flush()
    except IntegrityError:
        return False
    return True


def redeem(
    runtime: Runtime,
    account_id: str,
    code: str,
    dob: date | None,
    *,
    client_host: str | None,
    request_id: str | None,
) -> Result:
    """Link ``account_id`` to the code's patient if code and DOB match; one transaction.
    Counted in ``carebridge_activation_total{outcome}`` once committed."""
    result = _redeem_in_transaction(
        runtime, account_id, code, dob, client_host=client_host, request_id=request_id
    )
    if result.status is not Status.ALREADY:
        ACTIVATIONS.labels(result.status.value).inc()
    if result.voided:
        VOIDED.inc()
    return result


def _redeem_in_transaction(
    runtime: Runtime,
    account_id: str,
    code: str,
    dob: date | None,
    *,
    client_host: str | None,
    request_id: str | None,
) -> Result:
    actor = f"account:{account_id}"
    store = throttle.store_for(runtime.settings)
    now = throttle.utcnow()
    limits = [
        account_limit(account_id),
        throttle.address_limit(runtime.keyring, client_host, ADDRESS),
    ]
    with transaction(runtime.sessions) as db:
        if db.get(PatientLink, account_id) is not None:
            return Result(Status.ALREADY)
        counts = store.attempt(db, limits, now)
        if counts is None:
            audit.append(
                db,
                actor=actor,
                action="identity.activate",
                outcome=Outcome.DENIED,
                target=actor,
                request_id=request_id,
            )
            return Result(Status.LOCKED)
        found = _usable_code(db, runtime, code, dob, now)
        row = found.row
        if row is not None and _link(db, row, account_id, now):
            throttle.settle(store, db, reset=[limits[0]], refund=[limits[1]], now=now)
            audit.append(
                db,
                actor=actor,
                action="identity.activate",
                outcome=Outcome.ALLOWED,
                target=row.patient_id,
                request_id=request_id,
            )
            return Result(Status.LINKED, row.patient_id)
        counted = _count_failure(db, found, now, runtime.settings.activation_code_max_failures)
        audit.append(
            db,
            actor=actor,
            action="identity.activate",
            outcome=Outcome.FAILED,
            target=actor if counted is None else f"{actor} activation-code:{counted.code_id}",
            request_id=request_id,
        )
        if counted is not None and counted.voided:
            audit.append(
                db,
                actor=actor,
                action="identity.activate.void",
                outcome=Outcome.DENIED,
                target=f"{counted.patient_id} activation-code:{counted.code_id}",
                request_id=request_id,
            )
        if ACCOUNT.hard_locked(counts[limits[0].key]):
            audit.append(
                db,
                actor=actor,
                action="identity.activate.lock",
                outcome=Outcome.DENIED,
                target=actor,
                request_id=request_id,
            )
        return Result(Status.FAILED, voided=counted is not None and counted.voided)


def unlock(runtime: Runtime, account_id: str, *, reason: str, actor: str = "operator") -> int:
    """Staff clear an account's activation lock; returns the failures forgotten. Audited,
    the reason kept on a ``staff_action`` row."""
    reason = staff.check_reason(reason)
    store = throttle.store_for(runtime.settings)
    limit = account_limit(account_id)
    with transaction(runtime.sessions) as db:
        failures = store.state(db, limit, throttle.utcnow()).failures
        store.reset(db, limit)
        staff.record(
            db, actor=actor, action="identity.activate.unlock", reason=reason, account_id=account_id
        )
    return failures


def _is_linked(runtime: Runtime, account_id: str) -> bool:
    with runtime.sessions() as db:
        return db.get(PatientLink, account_id) is not None


# Adapters


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


DEFAULT_NEXT = "/activate"


def next_path(value: str | None) -> str:
    """Where to go after activating: a same-site path only, else this page (which says
    the record is linked)."""
    return authn.safe_next(value, DEFAULT_NEXT)


def _render(request: Request, context: dict[str, Any], *, status_code: int = 200) -> Response:
    return templates.TemplateResponse(
        request,
        "identity/activate.html",
        {"errors": {}, "next": DEFAULT_NEXT, **context},
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


def _parse(code: str, dob: str) -> tuple[date | None, dict[str, str]]:
    errors: dict[str, str] = {}
    if not code.strip() or len(code) > 64:
        errors["code"] = CODE_FORMAT
    parsed = parse_dob(dob) if len(dob) <= 20 else None
    if parsed is None:
        errors["dob"] = DOB_FORMAT
    return parsed, errors


async def _redeem(request: Request, account_id: str, code: str, dob: date) -> Result:
    return await run_in_threadpool(
        redeem,
        _runtime(request),
        account_id,
        code,
        dob,
        client_host=request.client.host if request.client else None,
        request_id=_request_id(request),
    )


async def activate_page(request: Request) -> Response:
    session = await authn.require(request)
    next_to = next_path(request.query_params.get("next"))
    linked = await run_in_threadpool(_is_linked, _runtime(request), session.account_id)
    if linked and next_to != DEFAULT_NEXT:
        return RedirectResponse(next_to, status_code=303)
    return _render(request, {"linked": linked, "next": next_to})


async def activate_submit(request: Request) -> Response:
    session = await authn.require(request)
    form = await read_form(request)
    code, dob_text = str(form.get("code", "")), str(form.get("dob", ""))
    next_to = next_path(str(form.get("next", "")))
    shown = {"linked": False, "next": next_to}
    dob, errors = _parse(code, dob_text)
    if errors or dob is None:
        return _render(request, {**shown, "errors": errors}, status_code=400)
    result = await _redeem(request, session.account_id, code, dob)
    if result.status in (Status.LINKED, Status.ALREADY):
        return RedirectResponse(next_to, status_code=303)
    if result.status is Status.LOCKED:
        return _render(request, {**shown, "errors": {"form": LOCKED}}, status_code=429)
    return _render(request, {**shown, "errors": {"form": FAILED}}, status_code=400)


@openapi.operation(
    answers={200: openapi.Json(Activated, "Linked")},
    security=openapi.session(),
    body=Activation,
    problems=(409, 429),
    tags=("patients",),
)
async def api_activate(request: Request) -> Response:
    """Redeem an activation code

    For a fully signed-in account without a patient link. The code (from staff) and the
    patient's date of birth must match; each code works once. Every mismatch gets the
    same 400 answer; five of them lock activation for the account until staff unlock it
    (429). A code presented with wrong dates of birth
    CAREBRIDGE_ACTIVATION_CODE_MAX_FAILURES times (5), from any accounts, is voided and
    answers like any wrong code from then on: staff issue a new one.

    - 400: The code and date of birth do not match a usable code
    - 401: Not signed in
    - 409: The account is already linked to a patient
    - 429: Activation is locked for this account (or this address, for a while)
    """
    session = await authn.require(request)
    body = await read_json(request, Activation)
    dob, errors = _parse(body.code, body.dob)
    if errors or dob is None:
        raise Problem(
            400,
            "The request body is not valid.",
            errors=[{"field": name, "message": message} for name, message in errors.items()],
        )
    result = await _redeem(request, session.account_id, body.code, dob)
    if result.status is Status.LINKED:
        return JSONResponse(Activated(patient_id=result.patient_id).model_dump())
    if result.status is Status.ALREADY:
        raise Problem(409, ALREADY)
    if result.status is Status.LOCKED:
        raise Problem(429, LOCKED)
    raise Problem(400, FAILED)


def routes() -> list[BaseRoute]:
    return [
        Route("/activate", activate_page, methods=["GET"], name="activate"),
        Route("/activate", activate_submit, methods=["POST"], name="activate_submit"),
        Route("/api/v1/activate", api_activate, methods=["POST"], name="api_activate"),
    ]
