"""Signing in with an email address and a password: the first factor.

``GET/POST /signin`` (page) and ``POST /api/v1/signin`` (JSON) share one service,
:func:`sign_in`:

1. Count the attempt against the login identifier and the client address *first*
   (identity/throttle.py): a locked key refuses at once with one generic answer,
   whether or not the account exists.
2. Look the account up by the login's lookup hash and check the password with Argon2id,
   against a dummy hash when there is no such account: the same work either way.
3. On success: reset the login's counter, re-hash the password if the Argon2 parameters
   changed, start a new session at level 1 (any session the browser held is ended), and
   say what comes next (``identity.authn.next_step``: the second factor, its enrolment,
   or done). An account whose email address is not verified yet gets no session: a code
   goes to the address (identity/email_verification.py) and the browser to the page
   that takes it. On failure: one answer for "no such account", "wrong password" and "account
   disabled" alike.

Every attempt, success, failure, lock and refusal is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import select
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
from carebridge.http.forms import field_errors, read_form, read_json
from carebridge.http.problems import Problem
from carebridge.http.templates import templates_for
from carebridge.i18n import N_
from carebridge.runtime import Runtime
from identity import accounts, authn, email_verification, sessions, throttle
from identity.accounts import PasswordAccount
from identity.authn import Step
from identity.credentials import password
from identity.email_verification import Pending
from identity.flows import upstream
from identity.interfaces import EmailSender
from identity.models import Account, LoginIdentifier

templates = templates_for(Path(__file__).resolve().parents[1] / "templates")

DEFAULT_NEXT = "/account"
SIGNIN_FAILED = N_("The email address or password is not right. Check them and try again.")
TOO_MANY = N_(
    "Too many attempts. Wait a few minutes, then try again. "
    "If this keeps happening, contact support."
)
ENTER_PASSWORD = N_("Enter your password.")
PASSWORD_TOO_LONG = f"Your password must be at most {password.MAX_LENGTH} characters long."


class InvalidCredentialsError(Exception):
    """No such account, a wrong password or an account that may not sign in: one answer."""


class TooManyAttemptsError(Exception):
    """The login or the client address is locked for now: one answer, whoever asks."""


# Parsing


@openapi.component
class Credentials(BaseModel):
    """An email address and a password."""

    model_config = ConfigDict(extra="forbid")

    login: str = Field(
        default="",
        description="Email address",
        json_schema_extra={"format": "email", "maxLength": accounts.MAX_LOGIN_LENGTH},
    )
    password: str = Field(default="", json_schema_extra={"maxLength": password.MAX_LENGTH})

    @field_validator("login")
    @classmethod
    def _login(cls, value: str) -> str:
        # Checked before normalising too: NFKC of a huge string is work for nothing.
        if len(value) > 4 * accounts.MAX_LOGIN_LENGTH:
            raise PydanticCustomError("login", accounts.LOGIN_TOO_LONG)
        login = accounts.normalise_login(value)
        problem = accounts.login_problem(login)
        if problem:
            raise PydanticCustomError("login", problem)
        return login

    @field_validator("password")
    @classmethod
    def _password(cls, value: str) -> str:
        if not value:
            raise PydanticCustomError("password", ENTER_PASSWORD)
        if len(value) > password.MAX_LENGTH:
            raise PydanticCustomError("password", PASSWORD_TOO_LONG)
        return value


@openapi.component
class SessionStarted(BaseModel):
    """A new session at level 1 (first factor). Send the token as ``Authorization: Bearer``."""

    session_token: str
    next_step: Literal["challenge", "enroll", "done"] = Field(
        description="challenge: pass the second factor (POST /api/v1/mfa/challenge); "
        "enroll: enrol one first (POST /api/v1/mfa/totp/enroll); done: signed in"
    )


@openapi.component
class VerificationPending(BaseModel):
    """An e-mail with a code is on its way (or, for an address that already has an account,
    a notice to its owner: the answer is the same). Send ``pending_token`` with the code
    to ``POST /api/v1/email/verify``."""

    pending_token: str
    next_step: Literal["verify_email"] = "verify_email"


VERIFY_PATH = "/email/verify"


def form_text(form: FormData, name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


def form_errors(exc: ValidationError) -> dict[str, str]:
    """Field name → first message, for a page's error summary."""
    errors: dict[str, str] = {}
    for error in field_errors(exc):
        errors.setdefault(error["field"], error["message"])
    return errors


# The service


@dataclass(frozen=True)
class SignedIn:
    token: str
    account_id: str
    step: Step


@dataclass(frozen=True)
class Attempt:
    """An attempt counted against its keys, and the account it named (if any)."""

    limits: list[throttle.Limit]  # the login's first
    refund: list[throttle.Limit]  # keys a success takes its attempt back from
    counts: dict[str, int]
    found: PasswordAccount | None

    @property
    def login_limit(self) -> throttle.Limit:
        return self.limits[0]

    @property
    def target(self) -> str:
        if self.found is not None:
            return f"account:{self.found.account_id}"
        return self.login_limit.key


def begin_attempt(
    runtime: Runtime,
    *,
    login: str,
    limits: list[throttle.Limit],
    refund: list[throttle.Limit],
    action: str,
    request_id: str | None,
) -> Attempt:
    """Count the attempt (or refuse it: :class:`TooManyAttemptsError`) and find the account.

    ``limits`` starts with the login's own.
    """
    store = throttle.store_for(runtime.settings)
    with transaction(runtime.sessions) as db:
        counts = store.attempt(db, limits, throttle.utcnow())
        found = accounts.find_by_login(db, runtime.keyring, login)
        attempt = Attempt(limits, refund, counts or {}, found)
        if counts is None:
            audit.append(
                db,
                actor="anonymous",
                action=action,
                outcome=Outcome.DENIED,
                target=attempt.target,
                request_id=request_id,
            )
    if counts is None:
        raise TooManyAttemptsError
    return attempt


def _audit_locks(db: Session, attempt: Attempt, request_id: str | None) -> None:
    for limit in attempt.limits:
        count = attempt.counts.get(limit.key, 0)
        if limit.policy.delay(count) != 0:
            target = attempt.target if limit is attempt.login_limit else limit.key
            audit.append(
                db,
                actor="anonymous",
                action="identity.signin.lock",
                outcome=Outcome.DENIED,
                target=target,
                request_id=request_id,
            )


def conclude(
    runtime: Runtime,
    attempt: Attempt,
    checked: password.Checked,
    *,
    action: str,
    user_agent: str,
    request_id: str | None,
    replacing_token: str | None,
    email: EmailSender,
    login: str,
) -> SignedIn | Pending:
    """Record a checked password's outcome: a new session, or InvalidCredentialsError.

    An account whose address is not verified yet (one from before e-mail verification,
    or a sign-up whose code never came back) gets no session: a code is sent to the
    address, and :class:`Pending` holds what the browser keeps until it is typed.
    """
    found = attempt.found
    store = throttle.store_for(runtime.settings)
    now = throttle.utcnow()
    outcome: SignedIn | Pending | None = None
    with transaction(runtime.sessions) as db:
        # The session lock first (a right password only: a wrong one writes no session).
        lock = (
            sessions.lock_account_sessions(db, found.account_id)
            if checked.ok and found is not None
            else None
        )
        if not (
            checked.ok
            and found is not None
            and lock is not None
            and lock.status == accounts.ACTIVE
            and accounts.password_unchanged(
                db,
                found.account_id,
                found.password_changed_at,
                rehash=checked.new_hash is not None,
            )
        ):
            audit.append(
                db,
                actor="anonymous",
                action=action,
                outcome=Outcome.FAILED,
                target=attempt.target,
                request_id=request_id,
            )
            _audit_locks(db, attempt, request_id)
        elif not found.verified:
            outcome = Pending(email_verification.new_pending_token())
            email_verification.issue(
                db,
                runtime,
                email,
                account_id=found.account_id,
                purpose=email_verification.SIGNIN,
                to=login,
                pending_token=outcome.token,
            )
            audit.append(
                db,
                actor=f"account:{found.account_id}",
                action="identity.email.verification.sent",
                outcome=Outcome.ALLOWED,
                target=f"account:{found.account_id}",
                request_id=request_id,
            )
            throttle.settle(store, db, reset=[attempt.login_limit], refund=attempt.refund, now=now)
        else:
            outcome = start_session(
                db,
                runtime,
                lock,
                first_factor=sessions.PASSWORD,
                action=action,
                user_agent=user_agent,
                request_id=request_id,
                replacing_token=replacing_token,
                has_second_factor=found.has_second_factor,
            )
            throttle.settle(store, db, reset=[attempt.login_limit], refund=attempt.refund, now=now)
            if checked.new_hash and found.password_hash:
                accounts.replace_password_hash(
                    db, found.account_id, old=found.password_hash, new=checked.new_hash
                )
    if outcome is None:
        raise InvalidCredentialsError
    return outcome


def start_session(
    db: Session,
    runtime: Runtime,
    lock: sessions.AccountLock,
    *,
    first_factor: str,
    action: str,
    user_agent: str,
    request_id: str | None,
    replacing_token: str | None,
    has_second_factor: bool | None = None,
) -> SignedIn:
    """A new level-1 session for the locked account (ending the one the browser held),
    audited.

    ``has_second_factor``: whether the account has a confirmed authenticator, when the
    caller already knows (password sign-in reads it with the account); else looked up.
    """
    if replacing_token:
        previous = sessions.load(db, runtime, replacing_token)
        if previous is not None:
            sessions.end(db, previous)
            db.flush()
    account_id = lock.account_id
    started = sessions.start(
        db,
        runtime,
        lock,
        level=sessions.FIRST_FACTOR,
        first_factor=first_factor,
        user_agent=user_agent,
    )
    actor = f"account:{account_id}"
    audit.append(
        db, actor=actor, action=action, outcome=Outcome.ALLOWED, target=actor, request_id=request_id
    )
    if has_second_factor is None:
        step = authn.next_step(db, runtime, started.session)
    elif has_second_factor:
        step = Step.CHALLENGE
    else:
        step = Step.ENROLL if runtime.settings.mfa_required else Step.DONE
    return SignedIn(started.token, account_id, step)


def sign_in(
    runtime: Runtime,
    credentials: Credentials,
    *,
    client_host: str | None,
    user_agent: str = "",
    request_id: str | None = None,
    replacing_token: str | None = None,
    email: EmailSender,
) -> SignedIn | Pending:
    """Sign in with a password (run it in the thread pool: it hashes); :class:`Pending`
    when the account must verify its address first (a code was sent)."""
    action = "identity.signin.password"
    login_limit = throttle.login_limit(accounts.login_hash(runtime.keyring, credentials.login))
    address = throttle.address_limit(runtime.keyring, client_host)
    attempt = begin_attempt(
        runtime,
        login=credentials.login,
        limits=[login_limit, address],
        refund=[address],
        action=action,
        request_id=request_id,
    )
    stored = attempt.found.password_hash if attempt.found is not None else None
    checked = password.verify(runtime.settings, stored, credentials.password)
    return conclude(
        runtime,
        attempt,
        checked,
        action=action,
        user_agent=user_agent,
        request_id=request_id,
        replacing_token=replacing_token,
        email=email,
        login=credentials.login,
    )


# Adapters


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def request_context(request: Request) -> dict[str, Any]:
    """What a service needs to know about the request besides its body."""
    return {
        "client_host": request.client.host if request.client else None,
        "user_agent": sessions.user_agent(request),
        "request_id": getattr(request.state, "request_id", None),
    }


def next_path(value: str | None) -> str:
    return authn.safe_next(value, DEFAULT_NEXT)


def destination(step: Step, next_to: str) -> str:
    """Where a page goes after the first factor: the step still missing, or ``next``."""
    if step is Step.DONE:
        return next_to
    if next_to == DEFAULT_NEXT:
        return step.value
    return f"{step.value}?{urlencode({'next': next_to})}"


StepName = Literal["challenge", "enroll", "done"]
_STEP_NAMES: dict[Step, StepName] = {
    Step.CHALLENGE: "challenge",
    Step.ENROLL: "enroll",
    Step.DONE: "done",
}


def step_name(step: Step) -> StepName:
    return _STEP_NAMES[step]


def signed_in_redirect(runtime: Runtime, result: SignedIn, next_to: str) -> Response:
    response = RedirectResponse(destination(result.step, next_to), status_code=303)
    sessions.set_cookie(response, runtime, result.token)
    return response


def verification_redirect(runtime: Runtime, pending: Pending, next_to: str) -> Response:
    """To the page that takes the e-mail's code, holding the pending state."""
    target = (
        VERIFY_PATH if next_to == DEFAULT_NEXT else f"{VERIFY_PATH}?{urlencode({'next': next_to})}"
    )
    response = RedirectResponse(target, status_code=303)
    email_verification.set_pending_cookie(response, runtime, pending.token)
    return response


def verification_pending(pending: Pending) -> Response:
    body = VerificationPending(pending_token=pending.token)
    return JSONResponse(body.model_dump(), status_code=202, headers={"Cache-Control": "no-store"})


def session_started(result: SignedIn) -> Response:
    body = SessionStarted(session_token=result.token, next_step=step_name(result.step))
    return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})


def _page(
    request: Request,
    *,
    login: str = "",
    next_to: str = DEFAULT_NEXT,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    return templates.TemplateResponse(
        request,
        "identity/signin.html",
        {
            "login": login,
            "next": next_to,
            "errors": errors or {},
            "signed_out": request.query_params.get("signed_out") == "1",
            "buttons": upstream.buttons(_runtime(request), next_to),
        },
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


async def signin_page(request: Request) -> Response:
    return _page(request, next_to=next_path(request.query_params.get("next")))


async def signin_submit(request: Request) -> Response:
    form = await read_form(request)
    runtime = _runtime(request)
    raw_login = form_text(form, "login")
    next_to = next_path(form_text(form, "next"))
    try:
        credentials = Credentials.model_validate(
            {"login": raw_login, "password": form_text(form, "password")}
        )
    except ValidationError as exc:
        return _page(
            request, login=raw_login, next_to=next_to, errors=form_errors(exc), status_code=400
        )
    try:
        result = await run_in_threadpool(
            sign_in,
            runtime,
            credentials,
            replacing_token=sessions.presented_token(request),
            email=request.app.state.outward.email,
            **request_context(request),
        )
    except TooManyAttemptsError:
        return _page(
            request, login=raw_login, next_to=next_to, errors={"form": TOO_MANY}, status_code=429
        )
    except InvalidCredentialsError:
        errors = {"form": SIGNIN_FAILED}
        return _page(request, login=raw_login, next_to=next_to, errors=errors, status_code=401)
    if isinstance(result, Pending):
        return verification_redirect(runtime, result, next_to)
    return signed_in_redirect(runtime, result, next_to)


@openapi.operation(
    answers={
        200: openapi.Json(SessionStarted, "Signed in at level 1"),
        202: openapi.Json(VerificationPending, "The address must be verified: a code was sent"),
    },
    body=Credentials,
    problems=(401, 429),
    tags=("accounts",),
)
async def api_signin(request: Request) -> Response:
    """Sign in with an email address and a password

    Starts a session at level 1 (first factor). `next_step` says what is still missing.
    A wrong password, an unknown email address and a disabled account get the same 401;
    a login or client address with too many failures gets 429 until its lock passes. An
    account whose email address is not verified yet gets no session: 202, a code is sent
    to the address, and `POST /api/v1/email/verify` with it and the `pending_token`
    starts the session.

    - 400: A field is missing, malformed or too long
    - 401: The email address or password is not right
    - 429: Too many attempts; try again later
    """
    credentials = await read_json(request, Credentials)
    try:
        result = await run_in_threadpool(
            sign_in,
            _runtime(request),
            credentials,
            email=request.app.state.outward.email,
            **request_context(request),
        )
    except TooManyAttemptsError:
        raise Problem(429, TOO_MANY) from None
    except InvalidCredentialsError:
        raise Problem(401, SIGNIN_FAILED, headers={"WWW-Authenticate": "Bearer"}) from None
    if isinstance(result, Pending):
        return verification_pending(result)
    return session_started(result)


def routes() -> list[BaseRoute]:
    return [
        Route("/signin", signin_page, methods=["GET"], name="signin"),
        Route("/signin", signin_submit, methods=["POST"], name="signin_submit"),
        Route("/api/v1/signin", api_signin, methods=["POST"], name="api_signin"),
    ]


# Operators


def unlock_account(runtime: Runtime, account_id: str, *, actor: str = "operator") -> int | None:
    """:func:`unlock` by account ID, for the account's login if it has one (an account
    that signs in only through a provider has none); returns the count it had, or None
    if there is no such account. Audited."""
    store = throttle.store_for(runtime.settings)
    with transaction(runtime.sessions) as db:
        if db.get(Account, account_id) is None:
            return None
        lookup_hash = db.scalar(
            select(LoginIdentifier.lookup_hash).where(LoginIdentifier.account_id == account_id)
        )
        failures = 0
        if lookup_hash is not None:
            limit = throttle.login_limit(lookup_hash)
            failures = store.state(db, limit, throttle.utcnow()).failures
            store.reset(db, limit)
        audit.append(
            db,
            actor=actor,
            action="identity.signin.unlock",
            outcome=Outcome.ALLOWED,
            target=f"account:{account_id}",
        )
    return failures


def unlock(runtime: Runtime, login: str, *, actor: str = "operator") -> int:
    """Clear a login's failure count and lock (the only way out of the lock at 100
    failures); returns the count it had. ``login`` is normalised. Audited."""
    store = throttle.store_for(runtime.settings)
    limit = throttle.login_limit(accounts.login_hash(runtime.keyring, login))
    with transaction(runtime.sessions) as db:
        failures = store.state(db, limit, throttle.utcnow()).failures
        found = accounts.find_by_login(db, runtime.keyring, login)
        store.reset(db, limit)
        audit.append(
            db,
            actor=actor,
            action="identity.signin.unlock",
            outcome=Outcome.ALLOWED,
            target=f"account:{found.account_id}" if found else limit.key,
        )
    return failures
