"""Where a visitor stands in signing in, and the guards pages and API calls use.

Signing in is a short state machine: no session → first factor (password or upstream
provider) → second factor (a TOTP code or a recovery code) → done. With MFA required
(the default), an account without a confirmed second factor must enrol one before
anything else is reachable.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from urllib.parse import urlencode

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request

from carebridge.http.problems import wants_json
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity import sessions
from identity.models import AuthSession, TotpCredential

# Changing a factor or a linked sign-in requires having proved it is you this recently.
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
