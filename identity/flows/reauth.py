"""Re-authentication before sensitive changes: "confirm it's you".

Changing the authenticator app, regenerating recovery codes or turning two-step
verification off needs :func:`identity.authn.is_recent`. A signed-in person who proved
themselves longer ago comes here and types a current authenticator code, or their
password if the account has one; the session comes back with a new token and a fresh
``authenticated_at`` (same level).

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
from identity.credentials import password, totp
from identity.flows import mfa
from identity.flows.mfa import Result, SessionToken, Status
from identity.models import AuthSession, PasswordCredential

WRONG_PASSWORD = N_("That password is not right.")
ENTER_PASSWORD = N_("Enter your password.")


@openapi.component
class Reauthentication(BaseModel):
    """Exactly one of: a current authenticator code, or the account's password."""

    code: str | None = Field(default=None, min_length=1, max_length=64)
    password: str | None = Field(default=None, min_length=1, max_length=password.MAX_LENGTH)

    @model_validator(mode="after")
    def _exactly_one(self) -> Reauthentication:
        if (self.code is None) == (self.password is None):
            raise ValueError("send either code or password")
        return self


def _audit(db: Session, account_id: str, action: str, outcome: Outcome, rid: str | None) -> None:
    actor = f"account:{account_id}"
    audit.append(db, actor=actor, action=action, outcome=outcome, target=actor, request_id=rid)


def _renew(
    db: Session, runtime: Runtime, session: AuthSession, user_agent: str
) -> sessions.Started | None:
    current = db.get(AuthSession, session.token_hash)
    if current is None:
        return None
    return sessions.start(
        db,
        runtime,
        account_id=current.account_id,
        level=current.level,
        user_agent=user_agent,
        replacing=current,
    )


def with_code(
    runtime: Runtime, session: AuthSession, code: str, *, user_agent: str, request_id: str | None
) -> Result:
    """The session again, proved just now with an authenticator code."""
    account_id = session.account_id
    action = "identity.reauth.totp"
    with transaction(runtime.sessions) as db:
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
        if not totp.verify(db, runtime, account_id, code):
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
        started = _renew(db, runtime, session, user_agent)
        if started is None:
            return Result(Status.GONE)
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
    """The session again, proved just now with the account's password (hashes: run it in
    the thread pool)."""
    account_id = session.account_id
    action = "identity.reauth.password"
    store = throttle.store_for(runtime.settings)
    with transaction(runtime.sessions) as db:
        login = accounts.login_of(db, runtime.keyring, account_id)
        credential = db.get(PasswordCredential, account_id)
        if login is None or credential is None:
            return Result(Status.WRONG)
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
        rehash = checked.new_hash is not None
        if not accounts.password_unchanged(db, account_id, changed_at, rehash=rehash):
            return Result(Status.GONE)  # reset meanwhile: this session has been ended
        store.reset(db, limit)
        if checked.new_hash:
            accounts.replace_password_hash(db, account_id, old=stored, new=checked.new_hash)
        started = _renew(db, runtime, session, user_agent)
        if started is None:
            return Result(Status.GONE)
        _audit(db, account_id, action, Outcome.ALLOWED, request_id)
        return Result(Status.OK, started.token, started.session.level)


def _ways(runtime: Runtime, account_id: str) -> dict[str, bool]:
    with runtime.sessions() as db:
        return {
            "has_totp": totp.confirmed(db, account_id) is not None,
            "has_password": db.get(PasswordCredential, account_id) is not None,
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


async def reauth_submit(request: Request) -> Response:
    session = await authn.require(request)
    form = await read_form(request)
    runtime: Runtime = request.app.state.runtime
    next_path = authn.safe_next(str(form.get("next") or ""))
    ways = await run_in_threadpool(_ways, runtime, session.account_id)
    context: dict[str, Any] = {"next": next_path, **ways}
    by_password = form.get("method") == "password"
    field = "password" if by_password else "code"
    typed = str(form.get(field) or "")
    limit = password.MAX_LENGTH if by_password else 64
    if not typed.strip() or len(typed) > limit:
        message = ENTER_PASSWORD if by_password else mfa.CODE_ERROR
        return _page(request, {**context, "errors": {field: message}}, 400)
    result = await run_in_threadpool(
        with_password if by_password else with_code,
        runtime,
        session,
        typed,
        user_agent=sessions.user_agent(request),
        request_id=_request_id(request),
    )
    if result.status is Status.OK:
        return mfa.signed_in_redirect(runtime, result.token, next_path)
    if result.status is Status.GONE:
        return mfa.signin_redirect(request)
    if result.status is Status.LOCKED:
        message = N_("Too many wrong attempts. Wait a few minutes, then try again.")
        return _page(request, {**context, "errors": {"form": message}}, 429)
    message = WRONG_PASSWORD if by_password else mfa.WRONG_CODE
    return _page(request, {**context, "errors": {field: message}}, 400)


@openapi.operation(
    answers={200: openapi.Json(SessionToken, "Re-authenticated")},
    security=openapi.session(),
    body=Reauthentication,
    problems=(429,),
)
async def api_reauth(request: Request) -> Response:
    """Re-authenticate with an authenticator code or the password

    Changing the authenticator needs a re-authentication in the last five minutes. On
    success the session keeps its level and gets a new token (the old one stops
    working). Wrong codes count towards the second step's lock, wrong passwords towards
    password sign-in's (429 while locked).

    - 400: Wrong code or password
    - 401: Not signed in
    - 429: Too many wrong attempts; wait
    """
    session = await authn.require(request)
    body = await read_json(request, Reauthentication)
    field, typed = ("code", body.code) if body.code is not None else ("password", body.password)
    assert typed is not None  # noqa: S101  (the model requires one)
    result = await run_in_threadpool(
        with_code if field == "code" else with_password,
        request.app.state.runtime,
        session,
        typed,
        user_agent=sessions.user_agent(request),
        request_id=_request_id(request),
    )
    if result.status is Status.LOCKED:
        raise Problem(429, "Too many wrong attempts. Wait a few minutes, then try again.")
    if result.status is Status.GONE:
        raise Problem(401, "Sign in first.", headers={"WWW-Authenticate": "Bearer"})
    if result.status is Status.WRONG:
        message = mfa.WRONG_CODE if field == "code" else WRONG_PASSWORD
        raise Problem(400, message, errors=[{"field": field, "message": message}])
    body_out = SessionToken(session_token=result.token, level=result.level)
    return JSONResponse(body_out.model_dump())


def routes() -> list[BaseRoute]:
    return [
        Route("/reauth", reauth_page, methods=["GET"], name="reauth"),
        Route("/reauth", reauth_submit, methods=["POST"]),
        Route("/api/v1/reauth", api_reauth, methods=["POST"]),
    ]
