"""The second factor: enrolling an authenticator app, and passing the second step with it
or with a recovery code.

- ``/mfa/enroll``: reachable at level 1 while the account has no confirmed authenticator
  (the state machine sends new accounts there), or at level 2 to add or replace one after
  a recent re-authentication. Confirming rotates the session to level 2 and, the first
  time, makes ten recovery codes shown once on ``/mfa/recovery-codes``.
- ``/mfa/challenge`` and ``/mfa/recovery``: level 1 → level 2 with a new session token.
  Wrong and replayed codes are counted per account (identity/throttle.py, policy
  :data:`SECOND_STEP`): enough of them lock the second step and re-authentication.

Each action is a sync service (one transaction, audited) behind a page and an API adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
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
from identity import authn, notices, sessions, throttle
from identity import recovery as lost_factor
from identity.authn import Step
from identity.credentials import recovery, totp
from identity.interfaces import EmailSender
from identity.models import AuthSession

templates = templates_for(Path(__file__).resolve().parents[1] / "templates")

CODE_ERROR = N_("Enter the 6-digit code from your authenticator app.")
RECOVERY_ERROR = N_("Enter one of your recovery codes, like ABCDE-12345.")
WRONG_CODE = N_("That code didn't work. Check your authenticator app and enter the newest code.")
WRONG_RECOVERY_CODE = N_("That recovery code didn't work. Each code works once.")


# Request and response bodies


class CodeForm(BaseModel):
    code: str = Field(min_length=1, max_length=64)


@openapi.component
class TotpCode(BaseModel):
    """A code from the authenticator app (6 digits; spaces allowed)."""

    code: str = Field(min_length=1, max_length=64, examples=["123456"])


@openapi.component
class RecoveryCodeIn(BaseModel):
    """One of the account's recovery codes (case, spaces and dashes don't matter)."""

    code: str = Field(min_length=1, max_length=64, examples=["ABCDE-12345"])


@openapi.component
class TotpEnrolment(BaseModel):
    """A new authenticator seed: add it to an app, then confirm it with a code."""

    otpauth_uri: str
    secret: str = Field(description="Base32, for typing into an app by hand")
    replacing: bool = Field(description="True if a confirmed authenticator stays active meanwhile")


@openapi.component
class SessionToken(BaseModel):
    """The session's new token (the old one stopped working) and its level."""

    session_token: str
    level: int


@openapi.component
class TotpConfirmed(BaseModel):
    """The authenticator is active and the session is at level 2 with a new token."""

    session_token: str
    level: int
    recovery_codes: list[str] = Field(
        description="Shown this once, and only when the first authenticator is confirmed"
    )


@openapi.component
class RecoveryAccepted(BaseModel):
    """Level 2 with a new session token; the recovery code is used up."""

    session_token: str
    level: int
    recovery_codes_remaining: int


# Services: one transaction each, audited


class Status(StrEnum):
    OK = "ok"
    WRONG = "wrong"  # wrong, replayed or malformed code
    LOCKED = "locked"  # too many wrong codes: wait
    REAUTH = "reauth"  # a factor change needs a recent re-authentication
    GONE = "gone"  # the session ended meanwhile


@dataclass(frozen=True)
class Result:
    status: Status
    token: str = ""
    level: int = 0
    recovery_codes: list[str] = field(default_factory=list)
    remaining: int = 0
    first: bool = False


def _actor(session: AuthSession) -> str:
    return f"account:{session.account_id}"


# Wrong second-factor codes, per account, counted before each check like password guesses
# (identity/throttle.py): four free, then doubling delays up to 15 minutes; 100 in a row
# lock the second step until an operator clears it (NIST SP 800-63B §5.2.2). Recovery
# codes and re-authentication codes share the count.
SECOND_STEP = throttle.Policy(
    "mfa", free=4, max_delay=15 * 60, hard_cap=100, forget_after=timedelta(days=30)
)


def second_step_limit(account_id: str) -> throttle.Limit:
    return throttle.Limit(SECOND_STEP, f"{SECOND_STEP.prefix}:{account_id}")


def count_attempt(db: Session, runtime: Runtime, account_id: str) -> int | None:
    """Count one second-factor attempt as failed until it passes; None: locked, refuse."""
    limit = second_step_limit(account_id)
    counts = throttle.store_for(runtime.settings).attempt(db, [limit], throttle.utcnow())
    return None if counts is None else counts[limit.key]


def attempt_passed(db: Session, runtime: Runtime, account_id: str) -> None:
    throttle.store_for(runtime.settings).reset(db, second_step_limit(account_id))


def record_refusal(
    db: Session,
    session: AuthSession,
    *,
    action: str,
    outcome: Outcome,
    count: int | None,
    request_id: str | None,
) -> None:
    """Audit a refused or failed attempt, and the lock a failure just earned."""
    actor = _actor(session)
    audit.append(
        db, actor=actor, action=action, outcome=outcome, target=actor, request_id=request_id
    )
    if count is not None and SECOND_STEP.delay(count) != 0:
        audit.append(
            db,
            actor=actor,
            action="identity.mfa.lock",
            outcome=Outcome.DENIED,
            target=actor,
            request_id=request_id,
        )


def unlock_second_step(runtime: Runtime, account_id: str, *, actor: str = "operator") -> int:
    """Clear an account's second-step lock (the only way out at 100 failures); returns the
    count it had. Audited."""
    store = throttle.store_for(runtime.settings)
    limit = second_step_limit(account_id)
    with transaction(runtime.sessions) as db:
        failures = store.state(db, limit, throttle.utcnow()).failures
        store.reset(db, limit)
        target = f"account:{account_id}"
        audit.append(
            db, actor=actor, action="identity.mfa.unlock", outcome=Outcome.ALLOWED, target=target
        )
    return failures


def may_change_factors(db: Session, runtime: Runtime, session: AuthSession) -> bool:
    """Enrolling during sign-up needs nothing more; replacing an authenticator needs a
    step-up (the current one proved in the last few minutes); adding a first one where
    none is required needs a recent sign-in; a session short of its second step changes
    nothing."""
    has_totp = totp.confirmed(db, session.account_id) is not None
    if session.level < sessions.SECOND_FACTOR:
        if has_totp:
            return False
        if runtime.settings.mfa_required:
            return True
    if has_totp:
        return authn.is_stepped_up(session, runtime.settings)
    return authn.is_recent(session)


def start_enrolment(
    runtime: Runtime, session: AuthSession, *, restart: bool, request_id: str | None
) -> totp.Enrolment | None:
    """The seed to enrol (None: re-authenticate first)."""
    with transaction(runtime.sessions) as db:
        if not may_change_factors(db, runtime, session):
            return None
        enrolment = totp.begin(
            db, runtime, session.account_id, restart=restart, owner=session.handle
        )
        if enrolment.created:
            audit.append(
                db,
                actor=_actor(session),
                action="identity.mfa.totp.enroll",
                outcome=Outcome.ALLOWED,
                target=_actor(session),
                request_id=request_id,
            )
        return enrolment


def _step_up(
    db: Session,
    runtime: Runtime,
    lock: sessions.AccountLock | None,
    session: AuthSession,
    user_agent: str,
) -> sessions.Started | None:
    """The session at level 2 with a new token; None if it (or its account) has ended.
    Read after the session lock, so an "end every session" committed first is seen."""
    current = db.get(AuthSession, session.token_hash)
    if current is None or lock is None:
        return None
    level = max(current.level, sessions.SECOND_FACTOR)
    return sessions.start(
        db,
        runtime,
        lock,
        level=level,
        user_agent=user_agent,
        replacing=current,
        stepped_up=True,
    )


def confirm_enrolment(
    runtime: Runtime,
    session: AuthSession,
    code: str,
    *,
    reveal_codes: bool,
    user_agent: str,
    request_id: str | None,
    email: EmailSender | None = None,
) -> Result:
    """Activate the seed being enrolled; the session steps up with a new token (and is
    stepped up: it just proved the second factor now in force).

    The first authenticator also gets ten recovery codes: returned (API) or kept for the
    new session to see once (``reveal_codes``, pages). The owner gets a notice through
    ``email``.
    """
    account_id = session.account_id
    with transaction(runtime.sessions) as db:
        lock = sessions.lock_account_sessions(db, account_id)
        if lock is None or db.get(AuthSession, session.token_hash) is None:
            return Result(Status.GONE)
        if not may_change_factors(db, runtime, session):
            return Result(Status.REAUTH)
        first = totp.confirmed(db, account_id) is None
        if not totp.confirm(db, runtime, account_id, code, owner=session.handle):
            audit.append(
                db,
                actor=_actor(session),
                action="identity.mfa.totp.confirm",
                outcome=Outcome.FAILED,
                target=_actor(session),
                request_id=request_id,
            )
            return Result(Status.WRONG)
        started = _step_up(db, runtime, lock, session, user_agent)
        assert started is not None  # noqa: S101  (checked above, in this transaction)
        codes: list[str] = []
        if first:
            reveal_to = started.session.handle if reveal_codes else None
            codes = recovery.regenerate(db, runtime, account_id, reveal_to=reveal_to)
        else:  # a replaced authenticator: whoever else is signed in is signed out
            sessions.revoke_others(db, lock, started.session, request_id=request_id)
        if email is not None:
            notices.send(db, runtime, email, account_id, notices.Notice.SECOND_FACTOR_ADDED)
        audit.append(
            db,
            actor=_actor(session),
            action="identity.mfa.totp.confirm",
            outcome=Outcome.ALLOWED,
            target=_actor(session),
            request_id=request_id,
        )
        return Result(Status.OK, started.token, started.session.level, codes, first=first)


def pass_second_factor(
    runtime: Runtime,
    session: AuthSession,
    code: str,
    *,
    method: str,
    user_agent: str,
    request_id: str | None,
    email: EmailSender | None = None,
) -> Result:
    """Level 1 → level 2 with a TOTP code (``method="totp"``) or a recovery code."""
    account_id = session.account_id
    action = f"identity.mfa.challenge.{method}"
    with transaction(runtime.sessions) as db:
        # First, before the attempt is counted: the lock's order (identity.sessions).
        lock = sessions.lock_account_sessions(db, account_id)
        count = count_attempt(db, runtime, account_id)
        if count is None:
            record_refusal(
                db,
                session,
                action=action,
                outcome=Outcome.DENIED,
                count=None,
                request_id=request_id,
            )
            return Result(Status.LOCKED)
        if method == "totp":
            passed = totp.verify(db, runtime, account_id, code)
        else:
            passed = totp.confirmed(db, account_id) is not None and recovery.use(
                db, runtime, account_id, code
            )
        if not passed:
            record_refusal(
                db,
                session,
                action=action,
                outcome=Outcome.FAILED,
                count=count,
                request_id=request_id,
            )
            return Result(Status.WRONG)
        attempt_passed(db, runtime, account_id)
        started = _step_up(db, runtime, lock, session, user_agent)
        if started is None or lock is None:
            return Result(Status.GONE)
        # The second factor is not lost after all: any recovery in progress stops.
        lost_factor.cancel_on_sign_in(db, runtime, email, lock, request_id=request_id)
        audit.append(
            db,
            actor=_actor(session),
            action=action,
            outcome=Outcome.ALLOWED,
            target=_actor(session),
            request_id=request_id,
        )
        remaining = recovery.remaining(db, account_id)
        return Result(Status.OK, started.token, started.session.level, remaining=remaining)


def reveal_recovery_codes(runtime: Runtime, session: AuthSession) -> list[str]:
    with transaction(runtime.sessions) as db:
        return recovery.reveal(db, runtime, session.account_id, session.handle)


def forget_recovery_codes(runtime: Runtime, session: AuthSession) -> None:
    with transaction(runtime.sessions) as db:
        recovery.forget_reveal(db, session.account_id)


# Helpers shared by the adapters


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _user_agent(request: Request) -> str:
    return sessions.user_agent(request)


def _next(value: object) -> str:
    return authn.safe_next(value if isinstance(value, str) else None)


def reauth_redirect(next_path: str) -> RedirectResponse:
    return RedirectResponse(f"/reauth?{urlencode({'next': next_path})}", status_code=303)


def signed_in_redirect(runtime: Runtime, token: str, location: str) -> RedirectResponse:
    response = RedirectResponse(location, status_code=303)
    sessions.set_cookie(response, runtime, token)
    return response


def signin_redirect(request: Request) -> RedirectResponse:
    response = RedirectResponse("/signin", status_code=303)
    sessions.clear_cookie(response, _runtime(request))
    return response


def _code(form: FormData) -> str | None:
    try:
        return CodeForm.model_validate({"code": form.get("code", "")}).code
    except ValidationError:
        return None


def _render(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
) -> Response:
    return templates.TemplateResponse(
        request, f"identity/{name}", {"errors": {}, **context}, status_code=status_code
    )


def _locked_problem() -> Problem:
    return Problem(429, "Too many wrong codes. Wait a few minutes, then try again.")


def reauth_problem() -> Problem:
    return Problem(
        403,
        "Confirm it is you first: POST /api/v1/reauth (with an authenticator or recovery "
        "code where the account has one), then try again.",
        step_up="reauth",
    )


def _gone_problem() -> Problem:
    return Problem(401, "Sign in first.", headers={"WWW-Authenticate": "Bearer"})


# Pages: enrolment


async def _enrol_page(
    request: Request, session: AuthSession, next_path: str, errors: dict[str, str]
) -> Response:
    runtime = _runtime(request)
    enrolment = await run_in_threadpool(
        start_enrolment, runtime, session, restart=False, request_id=_request_id(request)
    )
    if enrolment is None:
        return reauth_redirect(f"/mfa/enroll?{urlencode({'next': next_path})}")
    return _render(
        request,
        "mfa_enroll.html",
        {"enrolment": enrolment, "next": next_path, "errors": errors},
        status_code=400 if errors else 200,
    )


async def enroll_page(request: Request) -> Response:
    session = await authn.require(request, allow=frozenset({Step.ENROLL}))
    return await _enrol_page(request, session, _next(request.query_params.get("next")), {})


async def enroll_submit(request: Request) -> Response:
    session = await authn.require(request, allow=frozenset({Step.ENROLL}))
    form = await read_form(request)
    runtime = _runtime(request)
    next_path = _next(form.get("next"))
    code = _code(form)
    if code is None:
        return await _enrol_page(request, session, next_path, {"code": CODE_ERROR})
    result = await run_in_threadpool(
        confirm_enrolment,
        runtime,
        session,
        code,
        reveal_codes=True,
        user_agent=_user_agent(request),
        request_id=_request_id(request),
        email=request.app.state.outward.email,
    )
    if result.status is Status.REAUTH:
        return reauth_redirect(f"/mfa/enroll?{urlencode({'next': next_path})}")
    if result.status is Status.GONE:
        return signin_redirect(request)
    if result.status is Status.WRONG:
        return await _enrol_page(request, session, next_path, {"code": WRONG_CODE})
    if result.first:
        location = f"/mfa/recovery-codes?{urlencode({'next': next_path})}"
    else:
        location = "/account/security"
    return signed_in_redirect(runtime, result.token, location)


# Pages: recovery codes, shown once


async def recovery_codes_page(request: Request) -> Response:
    session = await authn.require(request)
    codes = await run_in_threadpool(reveal_recovery_codes, _runtime(request), session)
    next_path = _next(request.query_params.get("next"))
    return _render(request, "mfa_recovery_codes.html", {"codes": codes, "next": next_path})


async def recovery_codes_done(request: Request) -> Response:
    session = await authn.require(request)
    form = await read_form(request)
    await run_in_threadpool(forget_recovery_codes, _runtime(request), session)
    return RedirectResponse(_next(form.get("next")), status_code=303)


# Pages: the second step


_CHALLENGES = {
    # method: (template, malformed-input message, wrong-code message)
    "totp": ("mfa_challenge.html", CODE_ERROR, WRONG_CODE),
    "recovery": ("mfa_recovery.html", RECOVERY_ERROR, WRONG_RECOVERY_CODE),
}


async def _challenge_get(request: Request, method: str) -> Response:
    session = await authn.require(request, allow=frozenset({Step.CHALLENGE}))
    next_path = _next(request.query_params.get("next"))
    if session.level >= sessions.SECOND_FACTOR:
        return RedirectResponse(next_path, status_code=303)
    template = _CHALLENGES[method][0]
    return _render(request, template, {"next": next_path})


async def _challenge_post(request: Request, method: str) -> Response:
    session = await authn.require(request, allow=frozenset({Step.CHALLENGE}))
    form = await read_form(request)
    runtime = _runtime(request)
    next_path = _next(form.get("next"))
    template, malformed, wrong = _CHALLENGES[method]
    if session.level >= sessions.SECOND_FACTOR:
        return RedirectResponse(next_path, status_code=303)
    code = _code(form)
    if code is None:
        context = {"next": next_path, "errors": {"code": malformed}}
        return _render(request, template, context, status_code=400)
    result = await run_in_threadpool(
        pass_second_factor,
        runtime,
        session,
        code,
        method=method,
        user_agent=_user_agent(request),
        request_id=_request_id(request),
        email=request.app.state.outward.email,
    )
    if result.status is Status.OK:
        return signed_in_redirect(runtime, result.token, next_path)
    if result.status is Status.GONE:
        return signin_redirect(request)
    if result.status is Status.LOCKED:
        message = N_("Too many wrong codes. Wait a few minutes, then try again.")
        context = {"next": next_path, "errors": {"form": message}}
        return _render(request, template, context, status_code=429)
    context = {"next": next_path, "errors": {"code": wrong}}
    return _render(request, template, context, status_code=400)


async def challenge_page(request: Request) -> Response:
    return await _challenge_get(request, "totp")


async def challenge_submit(request: Request) -> Response:
    return await _challenge_post(request, "totp")


async def recovery_page(request: Request) -> Response:
    return await _challenge_get(request, "recovery")


async def recovery_submit(request: Request) -> Response:
    return await _challenge_post(request, "recovery")


# JSON API


@openapi.operation(
    answers={200: openapi.Json(TotpEnrolment, "The seed, as an otpauth URI and as text")},
    security=openapi.session(),
    problems=(403,),
)
async def api_enroll(request: Request) -> Response:
    """Start enrolling an authenticator app

    Allowed for a level-1 session of an account without a confirmed authenticator, and
    for a level-2 session re-authenticated in the last five minutes (POST
    /api/v1/reauth). Each call makes a new seed; the previous unconfirmed one stops
    working. The seed is active once POST /api/v1/mfa/totp/confirm accepts a code.

    - 401: Not signed in
    - 403: Re-authenticate first
    """
    session = await authn.require(request, allow=frozenset({Step.ENROLL}))
    enrolment = await run_in_threadpool(
        start_enrolment, _runtime(request), session, restart=True, request_id=_request_id(request)
    )
    if enrolment is None:
        raise reauth_problem()
    body = TotpEnrolment(
        otpauth_uri=enrolment.uri, secret=enrolment.secret, replacing=enrolment.replacing
    )
    return JSONResponse(body.model_dump())


@openapi.operation(
    answers={200: openapi.Json(TotpConfirmed, "Confirmed")},
    security=openapi.session(),
    body=TotpCode,
    problems=(403,),
)
async def api_confirm(request: Request) -> Response:
    """Confirm the authenticator app

    Activates the seed from POST /api/v1/mfa/totp/enroll. The session moves to level 2
    with a new token (the old one stops working). Confirming the account's first
    authenticator also returns ten recovery codes, shown this once.

    - 400: Wrong code, or nothing being enrolled
    - 401: Not signed in
    - 403: Re-authenticate first
    """
    session = await authn.require(request, allow=frozenset({Step.ENROLL}))
    body = await read_json(request, TotpCode)
    result = await run_in_threadpool(
        confirm_enrolment,
        _runtime(request),
        session,
        body.code,
        reveal_codes=False,
        user_agent=_user_agent(request),
        request_id=_request_id(request),
        email=request.app.state.outward.email,
    )
    if result.status is Status.REAUTH:
        raise reauth_problem()
    if result.status is Status.GONE:
        raise _gone_problem()
    if result.status is Status.WRONG:
        raise Problem(400, WRONG_CODE, errors=[{"field": "code", "message": WRONG_CODE}])
    confirmed = TotpConfirmed(
        session_token=result.token, level=result.level, recovery_codes=result.recovery_codes
    )
    return JSONResponse(confirmed.model_dump())


async def _api_second_step_session(request: Request) -> AuthSession:
    session = await authn.require(request, allow=frozenset({Step.CHALLENGE}))
    if session.level >= sessions.SECOND_FACTOR:
        raise Problem(409, "This session has already passed its second step.")
    return session


async def _api_second_factor(
    request: Request, session: AuthSession, method: str, code: str
) -> Response:
    result = await run_in_threadpool(
        pass_second_factor,
        _runtime(request),
        session,
        code,
        method=method,
        user_agent=_user_agent(request),
        request_id=_request_id(request),
        email=request.app.state.outward.email,
    )
    if result.status is Status.LOCKED:
        raise _locked_problem()
    if result.status is Status.GONE:
        raise _gone_problem()
    if result.status is Status.WRONG:
        message = _CHALLENGES[method][2]
        raise Problem(400, message, errors=[{"field": "code", "message": message}])
    if method == "recovery":
        accepted = RecoveryAccepted(
            session_token=result.token,
            level=result.level,
            recovery_codes_remaining=result.remaining,
        )
        return JSONResponse(accepted.model_dump())
    body = SessionToken(session_token=result.token, level=result.level)
    return JSONResponse(body.model_dump())


@openapi.operation(
    answers={200: openapi.Json(SessionToken, "Level 2")},
    security=openapi.session(),
    body=TotpCode,
    problems=(409, 429),
)
async def api_challenge(request: Request) -> Response:
    """Second step with an authenticator code

    For a level-1 session. Each code works once; wrong codes are counted and enough of
    them lock the second step for a while (429). On success the session is at level 2
    with a new token; the old one stops working.

    - 400: Wrong or already used code
    - 401: Not signed in
    - 409: The session is already at level 2
    - 429: Too many wrong codes; wait
    """
    session = await _api_second_step_session(request)
    body = await read_json(request, TotpCode)
    return await _api_second_factor(request, session, "totp", body.code)


@openapi.operation(
    answers={200: openapi.Json(RecoveryAccepted, "Level 2")},
    security=openapi.session(),
    body=RecoveryCodeIn,
    problems=(409, 429),
)
async def api_recovery(request: Request) -> Response:
    """Second step with a recovery code

    For a level-1 session whose authenticator is not at hand. The code is used up. Wrong
    codes count towards the same lock as wrong authenticator codes.

    - 400: Wrong or already used code
    - 401: Not signed in
    - 409: The session is already at level 2
    - 429: Too many wrong codes; wait
    """
    session = await _api_second_step_session(request)
    body = await read_json(request, RecoveryCodeIn)
    return await _api_second_factor(request, session, "recovery", body.code)


def routes() -> list[BaseRoute]:
    return [
        Route("/mfa/enroll", enroll_page, methods=["GET"], name="mfa_enroll"),
        Route("/mfa/enroll", enroll_submit, methods=["POST"]),
        Route("/mfa/recovery-codes", recovery_codes_page, methods=["GET"], name="mfa_codes"),
        Route("/mfa/recovery-codes", recovery_codes_done, methods=["POST"]),
        Route("/mfa/challenge", challenge_page, methods=["GET"], name="mfa_challenge"),
        Route("/mfa/challenge", challenge_submit, methods=["POST"]),
        Route("/mfa/recovery", recovery_page, methods=["GET"], name="mfa_recovery"),
        Route("/mfa/recovery", recovery_submit, methods=["POST"]),
        Route("/api/v1/mfa/totp/enroll", api_enroll, methods=["POST"]),
        Route("/api/v1/mfa/totp/confirm", api_confirm, methods=["POST"]),
        Route("/api/v1/mfa/challenge", api_challenge, methods=["POST"]),
        Route("/api/v1/mfa/recovery", api_recovery, methods=["POST"]),
    ]
