"""Changing the password, signed in: ``/account/password`` and ``POST /api/v1/account/password``.

A sensitive change: it needs a step-up (the second factor proved in the last few
minutes, :func:`identity.authn.is_stepped_up`), so a stolen session, even with the
password, cannot lock the owner out. The current password is not asked again: the
step-up proved more than it would, and an owner who forgot it can still change it.

The new password meets sign-up's policy (:func:`identity.credentials.password.policy_problem`).
Once changed, every other session of the account ends, this one continues with a new
token, and every grant of the account to an app is ended (refresh tokens revoked, access
tokens withdrawn, as disabling an account ends them): whoever held the old password may
have connected an app with it. The owner gets a notice at their verified address. The
new password is hashed outside any transaction (Argon2 takes a while).

Every attempt is counted before the hashing, per account and per client address
(``throttle.PASSWORD_CHANGE_ACCOUNT``/``_ADDRESS``); past them the answer is sign-in's
uniform "too many attempts" (429), and nothing is hashed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.http import openapi
from carebridge.http.forms import read_form, read_json
from carebridge.http.problems import Problem
from carebridge.i18n import N_
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity import accounts, authn, notices, sessions, throttle
from identity.credentials import password
from identity.flows import mfa, signin
from identity.flows.mfa import SessionToken
from identity.interfaces import EmailSender
from identity.models import AuthSession, PasswordCredential
from identity.notices import Notice
from identity.oidc import backchannel, withdrawals

PATH = "/account/password"
ENTER_NEW_PASSWORD = N_("Enter a new password.")
NO_PASSWORD = N_("This account signs in without a password, so there is none to change.")


class Result(StrEnum):
    OK = "ok"
    STEP_UP = "step_up"  # the session is not (or no longer) stepped up
    NO_PASSWORD = "no_password"  # noqa: S105  (an outcome, not a password)
    GONE = "gone"  # the session ended meanwhile
    TOO_MANY = "too_many"  # past the account's or the client address's throttle


@dataclass(frozen=True)
class Changed:
    outcome: Result
    token: str = ""
    level: int = 0
    step: authn.StepUp = authn.StepUp.DONE


class PolicyError(Exception):
    """The new password breaks the policy; the message says why, for its owner."""


@openapi.component
class NewPassword(BaseModel):
    """The new password (the same rules as at sign-up)."""

    model_config = ConfigDict(extra="forbid")

    new_password: str = Field(min_length=1, max_length=password.MAX_LENGTH)


def change(
    runtime: Runtime,
    session: AuthSession,
    new_password: str,
    *,
    email: EmailSender,
    user_agent: str,
    request_id: str | None,
    client_host: str | None = None,
) -> Changed:
    """Set the account's new password (run it in the thread pool: it hashes)."""
    account_id = session.account_id
    actor = f"account:{account_id}"
    with runtime.sessions() as db:
        login = accounts.login_of(db, runtime.keyring, account_id) or ""
    problem = password.policy_problem(
        new_password, login=login, min_length=runtime.settings.password_min_length
    )
    if problem:
        raise PolicyError(problem)
    limits = [
        throttle.address_limit(runtime.keyring, client_host, throttle.PASSWORD_CHANGE_ADDRESS),
        throttle.account_limit(throttle.PASSWORD_CHANGE_ACCOUNT, account_id),
    ]
    with transaction(runtime.sessions) as db:
        if throttle.store_for(runtime.settings).attempt(db, limits, throttle.utcnow()) is None:
            audit.append(
                db,
                actor=actor,
                action="identity.password.change",
                outcome=Outcome.DENIED,
                target=actor,
                request_id=request_id,
            )
            return Changed(Result.TOO_MANY)
    new_hash = password.hash_password(runtime.settings, new_password)
    with transaction(runtime.sessions) as db:
        # It renews this session and ends the others: the session lock first.
        lock = sessions.lock_account_sessions(db, account_id)
        current = db.get(AuthSession, session.token_hash)
        if current is None or lock is None:
            return Changed(Result.GONE)
        step = authn.step_up_of(db, runtime, current)
        if step is not authn.StepUp.DONE:
            return Changed(Result.STEP_UP, step=step)
        credential = db.get(PasswordCredential, account_id, with_for_update=True)
        if credential is None:
            return Changed(Result.NO_PASSWORD)
        credential.hash = new_hash
        credential.changed_at = utcnow()
        audit.append(
            db,
            actor=actor,
            action="identity.password.change",
            outcome=Outcome.ALLOWED,
            target=actor,
            request_id=request_id,
        )
        started = sessions.start(
            db,
            runtime,
            lock,
            level=current.level,
            user_agent=user_agent,
            replacing=current,
        )
        sessions.revoke_others(db, lock, started.session, request_id=request_id)
        backchannel.queue(db, account_id)
        withdrawals.end_grants(db, account_id)
        notices.send(db, runtime, email, account_id, Notice.PASSWORD_CHANGED)
    return Changed(Result.OK, started.token, started.session.level)


# Pages


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _render(request: Request, errors: dict[str, str], status_code: int = 200) -> Response:
    return mfa.templates.TemplateResponse(
        request,
        "identity/account_password.html",
        {
            "errors": errors,
            "min_length": _runtime(request).settings.password_min_length,
            "max_length": password.MAX_LENGTH,
        },
        status_code=status_code,
    )


async def _change(request: Request, session: AuthSession, new_password: str) -> Changed:
    return await run_in_threadpool(
        lambda: change(
            _runtime(request),
            session,
            new_password,
            email=request.app.state.outward.email,
            user_agent=sessions.user_agent(request),
            request_id=getattr(request.state, "request_id", None),
            client_host=request.client.host if request.client else None,
        )
    )


async def page(request: Request) -> Response:
    session = await authn.require(request)
    await authn.require_step_up(request, session, next_path=PATH)
    return _render(request, {})


async def submit(request: Request) -> Response:
    session = await authn.require(request)
    form = await read_form(request)
    typed = str(form.get("new_password") or "")
    if not typed:
        return _render(request, {"new_password": ENTER_NEW_PASSWORD}, 400)
    try:
        changed = await _change(request, session, typed)
    except PolicyError as exc:
        return _render(request, {"new_password": str(exc)}, 400)
    if changed.outcome is Result.STEP_UP:
        raise authn.step_up_needed(request, changed.step, PATH)
    if changed.outcome is Result.GONE:
        return mfa.signin_redirect(request)
    if changed.outcome is Result.NO_PASSWORD:
        return _render(request, {"form": NO_PASSWORD}, 409)
    if changed.outcome is Result.TOO_MANY:
        return _render(request, {"form": signin.TOO_MANY}, 429)
    return mfa.signed_in_redirect(_runtime(request), changed.token, "/account?done=password")


# JSON API


@openapi.operation(
    answers={200: openapi.Json(SessionToken, "Changed; this session's new token")},
    security=openapi.session(),
    body=NewPassword,
    problems=(403, 409, 429),
    tags=("account",),
)
async def api_change(request: Request) -> Response:
    """Change the password

    Needs a step-up (POST /api/v1/reauth with an authenticator or recovery code in the
    last few minutes). The new password follows the sign-up rules. Every other session
    of the account ends and every app's grant is ended (refresh tokens revoked); this
    session continues with the new token in the answer (the old one stops working). A
    notice goes to the account's verified address.

    - 400: The new password breaks the rules
    - 401: Not signed in
    - 403: Step-up needed
    - 409: The account has no password (it signs in through another provider)
    - 429: Too many attempts for this account or from this client address
    """
    session = await authn.require(request)
    body = await read_json(request, NewPassword)
    try:
        changed = await _change(request, session, body.new_password)
    except PolicyError as exc:
        message = str(exc)
        raise Problem(
            400, message, errors=[{"field": "new_password", "message": message}]
        ) from None
    if changed.outcome is Result.STEP_UP:
        raise authn.step_up_needed(request, changed.step)
    if changed.outcome is Result.GONE:
        raise Problem(401, "Sign in first.", headers={"WWW-Authenticate": "Bearer"})
    if changed.outcome is Result.NO_PASSWORD:
        raise Problem(409, NO_PASSWORD)
    if changed.outcome is Result.TOO_MANY:
        raise Problem(429, signin.TOO_MANY)
    body_out = SessionToken(session_token=changed.token, level=changed.level)
    return JSONResponse(body_out.model_dump())


def routes() -> list[BaseRoute]:
    return [
        Route(PATH, page, methods=["GET"], name="account_password"),
        Route(PATH, submit, methods=["POST"]),
        Route("/api/v1/account/password", api_change, methods=["POST"]),
    ]
