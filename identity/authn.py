"""Where a visitor stands in signing in, and the guards pages and API calls use.

Signing in is a short state machine: no session → first factor (password or upstream
provider) → second factor (a TOTP code or a recovery code) → done. With MFA required
(the default), an account without a confirmed second factor must enrol one before
anything else is reachable.

Step-up: sensitive changes (the password, the e-mail address, second factors, linking or
unlinking a sign-in method, exporting messages, deleting the account) need more than a
finished sign-in: the second factor proved in this session within ``step_up_minutes`` (a
sign-in's second step, ``/reauth`` with an authenticator or recovery code, or confirming
an authenticator). A password alone never steps up. An account with no second factor (MFA
optional, or upstream sign-in only) is sent to set one up first: its first authenticator
needs only a recent sign-in, and its owner gets a notice by e-mail (docs/threat-model.md,
"Step-up").
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from urllib.parse import urlencode

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request

from carebridge.http.problems import Problem, wants_json
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from carebridge.utc import utcnow
from identity import sessions
from identity.models import AuthSession, TotpCredential

# Adding a first second factor, where none is enrolled, requires having signed in (any
# factor) this recently; every other sensitive change requires a step-up (below).
RECENT = timedelta(minutes=5)


class Step(StrEnum):
    SIGN_IN = "/signin"
    CHALLENGE = "/mfa/challenge"
    ENROLL = "/mfa/enroll"
    DONE = ""


def next_step(db: Session, runtime: Runtime, session: AuthSession | None) -> Step:
    if session is None:
        return Step.SIGN_IN
    if session.level >= sessions.SECOND_FACTOR:
        return Step.DONE
    totp = db.get(TotpCredential, session.account_id)
    if totp is not None and totp.confirmed_at is not None:
        return Step.CHALLENGE
    if runtime.settings.mfa_required:
        return Step.ENROLL
    return Step.DONE


def safe_next(value: str | None, default: str = "/account") -> str:
    """A same-site path to return to after signing in; anything else is the default.

    Refuses absolute URLs, scheme-relative "//host" and "/\\host" (which browsers treat as
    another host), and control characters: an open redirect is an attack path.
    """
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return default
    if any(ord(ch) < 0x20 or ch == "\\" for ch in value):
        return default
    return value


def redirect_to(step: Step, request: Request) -> HTTPException:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return HTTPException(303, headers={"Location": f"{step.value}?{urlencode({'next': target})}"})


async def require(request: Request, *, allow: frozenset[Step] = frozenset()) -> AuthSession:
    """The request's session if signing in is complete (or at a step in ``allow``).

    A page gets a redirect to the step still missing; an API call a 401 problem.
    """
    runtime: Runtime = request.app.state.runtime
    session = await sessions.current(request)

    def step_of() -> Step:
        with runtime.sessions() as db:
            return next_step(db, runtime, session)

    step = await run_in_threadpool(step_of) if session is not None else Step.SIGN_IN
    if step is Step.DONE or step in allow:
        assert session is not None  # noqa: S101  (SIGN_IN is never in allow)
        return session
    if wants_json(request):
        raise HTTPException(
            401,
            "Sign in first." if step is Step.SIGN_IN else "A second factor is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    raise redirect_to(step, request)


async def require_second_factor(request: Request) -> str:
    """The account ID of a finished sign-in whose second factor was proved, whatever
    ``mfa_required`` says (care-team staff must have one: a staff invite's page). A page
    is sent to set one up, or to prove it, and back."""
    session = await require(request)
    if session.level >= sessions.SECOND_FACTOR:
        return session.account_id
    runtime: Runtime = request.app.state.runtime

    def enrolled() -> bool:
        with runtime.sessions() as db:
            totp = db.get(TotpCredential, session.account_id)
            return totp is not None and totp.confirmed_at is not None

    raise redirect_to(Step.CHALLENGE if await run_in_threadpool(enrolled) else Step.ENROLL, request)


async def is_signed_in(request: Request) -> bool:
    """Whether the request comes from a finished sign-in (MFA done). Never redirects: for
    pages that show something else to visitors (the home page)."""
    session = await sessions.current(request)
    if session is None:
        return False
    runtime: Runtime = request.app.state.runtime

    def step_of() -> Step:
        with runtime.sessions() as db:
            return next_step(db, runtime, session)

    return await run_in_threadpool(step_of) is Step.DONE


def is_recent(session: AuthSession) -> bool:
    return utcnow() - session.authenticated_at <= RECENT


# Step-up


class StepUp(StrEnum):
    DONE = "done"  # the second factor was proved recently enough
    REAUTH = "reauth"  # prove the second factor again: /reauth
    ENROL = "enrol"  # the account has no second factor: set one up first


def is_stepped_up(session: AuthSession, settings: Settings) -> bool:
    """Whether the session proved the second factor within ``step_up_minutes``."""
    if session.stepped_up_at is None:
        return False
    return utcnow() - session.stepped_up_at <= timedelta(minutes=settings.step_up_minutes)


def step_up_of(db: Session, runtime: Runtime, session: AuthSession) -> StepUp:
    if is_stepped_up(session, runtime.settings):
        return StepUp.DONE
    totp = db.get(TotpCredential, session.account_id)
    return StepUp.REAUTH if totp is not None and totp.confirmed_at is not None else StepUp.ENROL


def step_up_needed(request: Request, step: StepUp, next_path: str | None = None) -> HTTPException:
    """What a page (a redirect to ``/reauth`` or ``/mfa/enroll``, then back to
    ``next_path``, by default the request's own) or an API call (a 403 problem) gets
    when a sensitive change needs a step-up first."""
    if wants_json(request):
        if step is StepUp.ENROL:
            return Problem(
                403,
                "Set up two-step verification first (POST /api/v1/mfa/totp/enroll), "
                "then try again.",
                step_up="enrol",
            )
        return Problem(
            403,
            "Confirm it is you with your second factor first: POST /api/v1/reauth with an "
            "authenticator or recovery code, then try again.",
            step_up="reauth",
        )
    if next_path is None:
        next_path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    page = "/reauth" if step is StepUp.REAUTH else "/mfa/enroll"
    return HTTPException(303, headers={"Location": f"{page}?{urlencode({'next': next_path})}"})


async def require_step_up(
    request: Request, session: AuthSession, *, next_path: str | None = None
) -> None:
    """Return if the session is stepped up; otherwise raise :func:`step_up_needed`."""
    runtime: Runtime = request.app.state.runtime

    def state() -> StepUp:
        with runtime.sessions() as db:
            return step_up_of(db, runtime, session)

    step = await run_in_threadpool(state)
    if step is not StepUp.DONE:
        raise step_up_needed(request, step, next_path)
