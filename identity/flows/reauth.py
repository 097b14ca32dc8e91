"""Re-authentication: "confirm it's you".

Sensitive changes (the password, second factors, sign-in methods, exporting messages,
deleting the account) need a step-up (:func:`identity.authn.is_stepped_up`): the second
factor proved within ``step_up_minutes``. A signed-in person who proved it longer ago
comes here and types a current authenticator code or one of their recovery codes; the
session comes back with a new token, a fresh ``authenticated_at`` and ``stepped_up_at``
(same level).

The password is still accepted where the account has no authenticator (an app asking
``prompt=login`` or ``max_age`` needs a fresh ``authenticated_at``, and adding a first
second factor a recent sign-in), but it never steps up: a stolen session plus a phished
or reused password must not be enough to change the factors or delete the account.

Guesses are counted before they are checked, like everywhere else: codes against the
account's second-step count (:data:`identity.flows.mfa.SECOND_STEP`), passwords against
the login's own sign-in count, so re-authentication adds no guesses to either budget.
The password is hashed outside any transaction (Argon2 takes a while; SQLite would hold
its write lock meanwhile). An account with neither (upstream sign-in only, MFA optional)
signs out and in again.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator
from sqlalchemy.orm import Session
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
from identity import accounts, authn, sessions, throttle
from identity import recovery as lost_factor
from identity.credentials import password, recovery, totp
from identity.flows import mfa
from identity.flows.mfa import Result, Status
from identity.interfaces import EmailSender
from identity.models import AuthSession, PasswordCredential

WRONG_PASSWORD = N_("That password is not right.")
ENTER_PASSWORD = N_("Enter your password.")
USE_SECOND_FACTOR = N_(
    "Use a code from your authenticator app or one of your recovery codes, not your password."
)


@openapi.component
class Reauthentication(BaseModel):
    """Exactly one of: a current authenticator code, a recovery code, or the account's
    password (accepted only where it has no authenticator, and never a step-up)."""

    code: str | None = Field(default=None, min_length=1, max_length=64)
    recovery_code: str | None = Field(default=None, min_length=1, max_length=64)
    password: str | None = Field(default=None, min_length=1, max_length=password.MAX_LENGTH)

    @model_validator(mode="after")
    def _exactly_one(self) -> Reauthentication:
        given = [v for v in (self.code, self.recovery_code, self.password) if v is not None]
        if len(given) != 1:
            raise ValueError("send one of code, recovery_code or password")
        return self


@openapi.component
class Reauthenticated(BaseModel):
    """The session's new token (the old one stopped working), its level, and whether it
    is now stepped up for sensitive changes (a second factor was proved)."""

    session_token: str
    level: int
    stepped_up: bool


def _audit(db: Session, account_id: str, action: str, outcome: Outcome, rid: str | None) -> None:
    actor = f"account:{account_id}"
    audit.append(db, actor=actor, action=action, outcome=outcome, target=actor, request_id=rid)


def _renew(
    db: Session,
    runtime: Runtime,
    lock: sessions.AccountLock | None,
    session: AuthSession,
    user_agent: str,
    *,
    stepped_up: bool,
    first_factor: str | None = None,
) -> sessions.Started | None:
    """The session again with a new token; None if it (or its account) has ended. Read
    after the session lock, so an "end every session" committed first is seen."""
    current = db.get(AuthSession, session.token_hash)
    if current is None or lock is None:
        return None
    return sessions.start(
        db,
        runtime,
        lock,
        level=current.level,
        first_factor=first_factor,
        user_agent=user_agent,
        replacing=current,
        stepped_up=stepped_up,
    )


def with_code(
    runtime: Runtime,
    session: AuthSession,
    code: str,
    *,
    user_agent: str,
    request_id: str | None,
    method: str = "totp",
    email: EmailSender | None = None,
) -> Result:
    """The session again, stepped up just now with an authenticator code
    (``method="totp"``) or a recovery code (``method="recovery"``, used up). As at
    sign-in, the second factor proved ends any recovery of it in progress."""
    account_id = session.account_id
    action = f"identity.reauth.{method}"
    with transaction(runtime.sessions) as db:
        # First, before the attempt is counted: the lock's order (identity.sessions).
        lock = sessions.lock_account_sessions(db, account_id)
        count = mfa.count_attempt(db, runtime, account_id)
        if count is None:
            mfa.record_refusal(
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
            mfa.record_refusal(
                db,
                session,
                action=action,
                outcome=Outcome.FAILED,
                count=count,
                request_id=request_id,
            )
            return Result(Status.WRONG)
        mfa.attempt_passed(db, runtime, account_id)
        started = _renew(db, runtime, lock, session, user_agent, stepped_up=True)
        if started is None or lock is None:
            return Result(Status.GONE)
        lost_factor.cancel_on_sign_in(db, runtime, email, lock, request_id=request_id)
        _audit(db, account_id, action, Outcome.ALLOWED, request_id)
        return Result(Status.OK, started.token, started.session.level)


def with_password(
    runtime: Runtime,
    session: AuthSession,
    typed: str,
    *,
    user_agent: str,
    request_id: str | None,
) -> Result:
    """The session again, its first factor proved just now with the account's password
    (hashes: run it in the thread pool). Refused where the account has an authenticator
    (the code is asked instead), and never a step-up."""
    account_id = session.account_id
    action = "identity.reauth.password"
    store = throttle.store_for(runtime.settings)
    with transaction(runtime.sessions) as db:
        login = accounts.login_of(db, runtime.keyring, account_id)
        credential = db.get(PasswordCredential, account_id)
        if login is None or credential is None:
            return Result(Status.WRONG)
        if totp.confirmed(db, account_id) is not None:
            _audit(db, account_id, action, Outcome.DENIED, request_id)
            return Result(Status.REAUTH)
        stored, changed_at = credential.hash, credential.changed_at
        limit = throttle.login_limit(accounts.login_hash(runtime.keyring, login))
        if store.attempt(db, [limit], throttle.utcnow()) is None:
            _audit(db, account_id, action, Outcome.DENIED, request_id)
            return Result(Status.LOCKED)
    checked = password.verify(runtime.settings, stored, typed)
    with transaction(runtime.sessions) as db:
        if not checked.ok:
            _audit(db, account_id, action, Outcome.FAILED, request_id)
            return Result(Status.WRONG)
        lock = sessions.lock_account_sessions(db, account_id)
        rehash = checked.new_hash is not None
        started = None
        # A reset committed meanwhile has ended this session: nothing to renew.
        if accounts.password_unchanged(db, account_id, changed_at, rehash=rehash):
            store.reset(db, limit)
            if checked.new_hash:
                accounts.replace_password_hash(db, account_id, old=stored, new=checked.new_hash)
            started = _renew(
                db,
                runtime,
                lock,
                session,
                user_agent,
                stepped_up=False,
                first_factor=sessions.PASSWORD,
            )
        if started is None:
            return Result(Status.GONE)
        _audit(db, account_id, action, Outcome.ALLOWED, request_id)
        return Result(Status.OK, started.token, started.session.level)


def _ways(runtime: Runtime, account_id: str) -> dict[str, bool]:
    with runtime.sessions() as db:
        has_totp = totp.confirmed(db, account_id) is not None
        return {
            "has_totp": has_totp,
            # The password only where there is no second factor to ask for.
            "has_password": not has_totp and db.get(PasswordCredential, account_id) is not None,
        }


def _page(request: Request, context: dict[str, Any], status_code: int = 200) -> Response:
    return mfa.templates.TemplateResponse(
        request, "identity/reauth.html", {"errors": {}, **context}, status_code=status_code
    )


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def reauth_page(request: Request) -> Response:
    session = await authn.require(request)
    runtime: Runtime = request.app.state.runtime
    ways = await run_in_threadpool(_ways, runtime, session.account_id)
    next_path = authn.safe_next(request.query_params.get("next"))
    return _page(request, {"next": next_path, **ways})


_FIELDS = {
    # method: (form field, longest input, malformed-input message, wrong-input message)
    "totp": ("code", 64, mfa.CODE_ERROR, mfa.WRONG_CODE),
    "recovery": ("recovery_code", 64, mfa.RECOVERY_ERROR, mfa.WRONG_RECOVERY_CODE),
    "password": ("password", password.MAX_LENGTH, ENTER_PASSWORD, WRONG_PASSWORD),
}


async def reauth_submit(request: Request) -> Response:
    session = await authn.require(request)
    form = await read_form(request)
    runtime: Runtime = request.app.state.runtime
    next_path = authn.safe_next(str(form.get("next") or ""))
    ways = await run_in_threadpool(_ways, runtime, session.account_id)
    context: dict[str, Any] = {"next": next_path, **ways}
    method = str(form.get("method") or "totp")
    if method not in _FIELDS:
        method = "totp"
    field, limit, malformed, wrong = _FIELDS[method]
    typed = str(form.get(field) or "")
    if not typed.strip() or len(typed) > limit:
        return _page(request, {**context, "errors": {field: malformed}}, 400)
    if method == "password":
        result = await run_in_threadpool(
            with_password,
            runtime,
            session,
            typed,
            user_agent=sessions.user_agent(request),
            request_id=_request_id(request),
        )
    else:
        result = await run_in_threadpool(
            lambda: with_code(
                runtime,
                session,
                typed,
                user_agent=sessions.user_agent(request),
                request_id=_request_id(request),
                method=method,
                email=request.app.state.outward.email,
            )
        )
    if result.status is Status.OK:
        return mfa.signed_in_redirect(runtime, result.token, next_path)
    if result.status is Status.GONE:
        return mfa.signin_redirect(request)
    if result.status is Status.LOCKED:
        message = N_("Too many wrong attempts. Wait a few minutes, then try again.")
        return _page(request, {**context, "errors": {"form": message}}, 429)
    if result.status is Status.REAUTH:
        return _page(request, {**context, "errors": {"form": USE_SECOND_FACTOR}}, 400)
    return _page(request, {**context, "errors": {field: wrong}}, 400)


@openapi.operation(
    answers={200: openapi.Json(Reauthenticated, "Re-authenticated")},
    security=openapi.session(),
    body=Reauthentication,
    problems=(429,),
)
async def api_reauth(request: Request) -> Response:
    """Re-authenticate with an authenticator code, a recovery code or the password

    Sensitive changes (the password, second factors, sign-in methods, deleting the
    account) need the second factor proved in the last few minutes (`step_up_minutes`,
    default 5): send `code` (the authenticator) or `recovery_code` (used up). The
    `password` is accepted only for an account without an authenticator, and never
    steps up (`stepped_up` is false). On success the session keeps its level and gets a
    new token (the old one stops working). Wrong codes count towards the second step's
    lock, wrong passwords towards password sign-in's (429 while locked).

    - 400: Wrong code or password, or a password for an account with an authenticator
    - 401: Not signed in
    - 429: Too many wrong attempts; wait
    """
    session = await authn.require(request)
    body = await read_json(request, Reauthentication)
    runtime: Runtime = request.app.state.runtime
    user_agent = sessions.user_agent(request)
    request_id = _request_id(request)
    if body.password is not None:
        method, typed = "password", body.password
        result = await run_in_threadpool(
            with_password, runtime, session, typed, user_agent=user_agent, request_id=request_id
        )
    else:
        method = "totp" if body.code is not None else "recovery"
        typed = body.code if body.code is not None else str(body.recovery_code)
        result = await run_in_threadpool(
            lambda: with_code(
                runtime,
                session,
                typed,
                user_agent=user_agent,
                request_id=request_id,
                method=method,
                email=request.app.state.outward.email,
            )
        )
    field, _, _, wrong = _FIELDS[method]
    if result.status is Status.LOCKED:
        raise Problem(429, "Too many wrong attempts. Wait a few minutes, then try again.")
    if result.status is Status.GONE:
        raise Problem(401, "Sign in first.", headers={"WWW-Authenticate": "Bearer"})
    if result.status is Status.REAUTH:
        raise Problem(
            400, USE_SECOND_FACTOR, errors=[{"field": field, "message": USE_SECOND_FACTOR}]
        )
    if result.status is Status.WRONG:
        raise Problem(400, wrong, errors=[{"field": field, "message": wrong}])
    body_out = Reauthenticated(
        session_token=result.token, level=result.level, stepped_up=method != "password"
    )
    return JSONResponse(body_out.model_dump())


def routes() -> list[BaseRoute]:
    return [
        Route("/reauth", reauth_page, methods=["GET"], name="reauth"),
        Route("/reauth", reauth_submit, methods=["POST"]),
        Route("/api/v1/reauth", api_reauth, methods=["POST"]),
    ]
