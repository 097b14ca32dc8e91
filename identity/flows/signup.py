"""Silent sign-up: an email address and a password, nothing sent to anyone.

``GET/POST /signup`` (page) and ``POST /api/v1/signup`` (JSON). No email, SMS or call
goes out, so nobody near the person learns they signed up. The new account is signed in
at once at level 1 and sent on to enrol a second factor (when MFA is required).

An email address that already has an account: sign-up is then a password sign-in
attempt for it. The right password signs in (the answer is the same as for a new
account: a session and the next step); a wrong one fails like a sign-in, counted by the
same throttle. Both paths do one Argon2 computation, so timing does not tell them apart.

What this cannot hide: with unique email logins and nothing sent out, whoever tries to
sign up with an address that is taken, using a password other than its owner's, sees
that it did not work. No answer avoids it: any account that "worked" must be one they
can sign in to again with that address and password. So the design makes that probe
cost what a password guess costs: one attempt counted against the address's login
(lockable like any other), against the client address, and against the client
address's sign-up budget (:data:`identity.throttle.SIGNUP_ADDRESS`), each audited.
docs/architecture.md ("Accounts and sign-in") records the reasoning.
"""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.http import openapi
from carebridge.http.forms import read_form, read_json
from carebridge.http.problems import Problem
from carebridge.i18n import N_
from carebridge.runtime import Runtime
from identity import accounts, sessions, throttle
from identity.credentials import password
from identity.flows import signin
from identity.flows.signin import (
    Credentials,
    InvalidCredentialsError,
    SignedIn,
    TooManyAttemptsError,
    form_errors,
    form_text,
    next_path,
    request_context,
    signed_in_redirect,
)

SIGNUP_FAILED = N_(
    "We couldn't create an account or sign you in with this email address and password. "
    "If you already have an account, check your password, or sign in instead."
)


class PasswordPolicyError(Exception):
    """The new password breaks the policy; the message says why, for its owner."""


def sign_up(
    runtime: Runtime,
    credentials: Credentials,
    *,
    client_host: str | None,
    user_agent: str = "",
    request_id: str | None = None,
    replacing_token: str | None = None,
) -> SignedIn:
    """Create the account and sign it in, or sign in to the one that has this login
    (run it in the thread pool: it hashes). The password policy is checked first."""
    problem = password.policy_problem(
        credentials.password,
        login=credentials.login,
        min_length=runtime.settings.password_min_length,
    )
    if problem:
        raise PasswordPolicyError(problem)
    keyring = runtime.keyring
    login_limit = throttle.login_limit(accounts.login_hash(keyring, credentials.login))
    address = throttle.address_limit(keyring, client_host)
    signups = throttle.address_limit(keyring, client_host, throttle.SIGNUP_ADDRESS)
    attempt = signin.begin_attempt(
        runtime,
        login=credentials.login,
        limits=[login_limit, address, signups],
        refund=[address],  # every sign-up spends from the address's sign-up budget
        action="identity.signup",
        request_id=request_id,
    )
    if attempt.found is None:
        new_hash = password.hash_password(runtime.settings, credentials.password)
        try:
            return _create(
                runtime,
                attempt,
                credentials.login,
                new_hash,
                replacing_token,
                user_agent=user_agent,
                request_id=request_id,
            )
        except IntegrityError:
            # Someone created this login since the lookup: carry on as for a taken one.
            with runtime.sessions() as db:
                found = accounts.find_by_login(db, keyring, credentials.login)
            attempt = signin.Attempt(attempt.limits, attempt.refund, attempt.counts, found)
    stored = attempt.found.password_hash if attempt.found is not None else None
    checked = password.verify(runtime.settings, stored, credentials.password)
    return signin.conclude(
        runtime,
        attempt,
        checked,
        action="identity.signup.existing",
        user_agent=user_agent,
        request_id=request_id,
        replacing_token=replacing_token,
    )


def _create(
    runtime: Runtime,
    attempt: signin.Attempt,
    login: str,
    password_hash: str,
    replacing_token: str | None,
    *,
    user_agent: str,
    request_id: str | None,
) -> SignedIn:
    store = throttle.store_for(runtime.settings)
    with transaction(runtime.sessions) as db:
        account_id = accounts.create(db, runtime.keyring, login=login, password_hash=password_hash)
        actor = f"account:{account_id}"
        audit.append(
            db,
            actor=actor,
            action="identity.signup",
            outcome=Outcome.ALLOWED,
            target=actor,
            request_id=request_id,
        )
        signed_in = signin.start_session(
            db,
            runtime,
            account_id,
            action="identity.signin.password",
            user_agent=user_agent,
            request_id=request_id,
            replacing_token=replacing_token,
        )
        throttle.settle(
            store, db, reset=[attempt.login_limit], refund=attempt.refund, now=throttle.utcnow()
        )
    return signed_in


# Adapters


def _page(
    request: Request,
    *,
    login: str = "",
    next_to: str = signin.DEFAULT_NEXT,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    runtime: Runtime = request.app.state.runtime
    return signin.templates.TemplateResponse(
        request,
        "identity/signup.html",
        {
            "login": login,
            "next": next_to,
            "errors": errors or {},
            "min_length": runtime.settings.password_min_length,
            "max_length": password.MAX_LENGTH,
        },
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


async def signup_page(request: Request) -> Response:
    return _page(request, next_to=next_path(request.query_params.get("next")))


async def signup_submit(request: Request) -> Response:
    form = await read_form(request)
    runtime: Runtime = request.app.state.runtime
    raw_login = form_text(form, "login")
    next_to = next_path(form_text(form, "next"))

    def again(errors: dict[str, str], status_code: int) -> Response:
        return _page(
            request, login=raw_login, next_to=next_to, errors=errors, status_code=status_code
        )

    try:
        credentials = Credentials.model_validate(
            {"login": raw_login, "password": form_text(form, "password")}
        )
    except ValidationError as exc:
        return again(form_errors(exc), 400)
    try:
        result = await run_in_threadpool(
            sign_up,
            runtime,
            credentials,
            replacing_token=sessions.presented_token(request),
            **request_context(request),
        )
    except PasswordPolicyError as exc:
        return again({"password": str(exc)}, 400)
    except TooManyAttemptsError:
        return again({"form": signin.TOO_MANY}, 429)
    except InvalidCredentialsError:
        return again({"form": SIGNUP_FAILED}, 401)
    return signed_in_redirect(runtime, result, next_to)


@openapi.operation(
    answers={200: openapi.Json(signin.SessionStarted, "Signed in at level 1")},
    body=Credentials,
    problems=(401, 429),
    tags=("accounts",),
)
async def api_signup(request: Request) -> Response:
    """Create an account with an email address and a password

    Silent: nothing is sent to the email address or anywhere else. Starts a session at
    level 1 for the new account; `next_step` is `enroll` while MFA is required. For an
    email address that already has an account this is a sign-in attempt: its password
    signs in (same 200 answer), any other fails with 401 and counts like a failed sign-
    in. The password must be at least CAREBRIDGE_PASSWORD_MIN_LENGTH characters, not a
    commonly used one, and not contain the email address.

    - 400: A field is missing, malformed or too long, or the password is refused
    - 401: The email address has an account and this is not its password
    - 429: Too many attempts; try again later
    """
    credentials = await read_json(request, Credentials)
    try:
        result = await run_in_threadpool(
            sign_up, request.app.state.runtime, credentials, **request_context(request)
        )
    except PasswordPolicyError as exc:
        raise Problem(
            400,
            "The request body is not valid.",
            errors=[{"field": "password", "message": str(exc)}],
        ) from None
    except TooManyAttemptsError:
        raise Problem(429, signin.TOO_MANY) from None
    except InvalidCredentialsError:
        raise Problem(401, SIGNUP_FAILED, headers={"WWW-Authenticate": "Bearer"}) from None
    return signin.session_started(result)


def routes() -> list[BaseRoute]:
    return [
        Route("/signup", signup_page, methods=["GET"], name="signup"),
        Route("/signup", signup_submit, methods=["POST"], name="signup_submit"),
        Route("/api/v1/signup", api_signup, methods=["POST"], name="api_signup"),
    ]
