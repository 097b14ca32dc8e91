"""Sign-up that does not tell whether an address is taken: the same answer either way,
and an e-mail to the address.

``GET/POST /signup`` (page) and ``POST /api/v1/signup`` (JSON). The password policy is
checked first; then, whether or not the address has an account, the password is hashed
(the same Argon2 work on both paths, no early return) and the answer is the same: the
page goes to "check your email" (``/email/verify``, with the pending state in a cookie),
the API answers 202 with a pending token.

- A new address: the account is created without a password, its address unverified,
  and an e-mail carries a link and a code (identity/email_verification.py); the
  password's hash waits on that verification and becomes the account's only when one of
  them comes back: the code typed in the same browser signs in and goes on like a
  sign-in (identity/flows/email_verification.py). Until then signing in with the chosen
  password fails like a wrong one, so it cannot tell a new address from a taken one.
- An address whose account is such an unfinished sign-up (no password, unverified):
  this sign-up replaces it (a new verification with this password, the older one
  ended), so a stranger's sign-up cannot hold someone else's address.
- A taken address: its owner gets a notice ("someone tried to create an account with
  your address; if it was you, sign in or reset your password") and nothing else
  changes. The pending state handed out is as random as a real one and matches nothing.

Each sign-up spends from the client address's sign-up budget
(:data:`identity.throttle.SIGNUP_ADDRESS`), and one address gets at most
``CAREBRIDGE_EMAILS_PER_ADDRESS_PER_HOUR`` e-mails, whoever asks. docs/architecture.md
("Accounts and sign-in") records the reasoning.
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
from carebridge.runtime import Runtime
from identity import accounts, email_verification, throttle
from identity.credentials import password
from identity.email_verification import Pending
from identity.flows import signin
from identity.flows.signin import (
    Credentials,
    TooManyAttemptsError,
    form_errors,
    form_text,
    next_path,
    request_context,
)
from identity.interfaces import EmailSender


class PasswordPolicyError(Exception):
    """The new password breaks the policy; the message says why, for its owner."""


def sign_up(
    runtime: Runtime,
    credentials: Credentials,
    *,
    email: EmailSender,
    client_host: str | None,
    user_agent: str = "",
    request_id: str | None = None,
) -> Pending:
    """Create the account and send its verification, or notify the owner of the taken
    address; the same answer either way (run it in the thread pool: it hashes). The
    password policy is checked first."""
    problem = password.policy_problem(
        credentials.password,
        login=credentials.login,
        min_length=runtime.settings.password_min_length,
    )
    if problem:
        raise PasswordPolicyError(problem)
    signups = throttle.address_limit(runtime.keyring, client_host, throttle.SIGNUP_ADDRESS)
    store = throttle.store_for(runtime.settings)
    with transaction(runtime.sessions) as db:
        counted = store.attempt(db, [signups], throttle.utcnow())
        if counted is None:
            audit.append(
                db,
                actor="anonymous",
                action="identity.signup",
                outcome=Outcome.DENIED,
                target=signups.key,
                request_id=request_id,
            )
    if counted is None:
        raise TooManyAttemptsError
    # Hashed whether or not the address is taken: the same work on both paths.
    new_hash = password.hash_password(runtime.settings, credentials.password)
    pending = Pending(email_verification.new_pending_token())
    try:
        _record(
            runtime,
            email,
            login=credentials.login,
            password_hash=new_hash,
            pending=pending,
            request_id=request_id,
        )
    except IntegrityError:
        # Someone created this login since the lookup: carry on as for a taken one.
        _record(
            runtime,
            email,
            login=credentials.login,
            password_hash=new_hash,
            pending=pending,
            request_id=request_id,
        )
    return pending


def _record(
    runtime: Runtime,
    email: EmailSender,
    *,
    login: str,
    password_hash: str,
    pending: Pending,
    request_id: str | None,
) -> None:
    with transaction(runtime.sessions) as db:
        found = accounts.find_by_login(db, runtime.keyring, login)
        if found is not None and not found.verified and found.password_hash is None:
            # Another unfinished sign-up (perhaps a stranger's): this one replaces it, and
            # whoever reads the address finishes it.
            account_id = found.account_id
        elif found is not None:
            notified = email_verification.notify_taken(db, runtime, email, to=login)
            audit.append(
                db,
                actor="anonymous",
                action="identity.signup.existing",
                outcome=Outcome.ALLOWED if notified else Outcome.DENIED,
                target=f"account:{found.account_id}",
                request_id=request_id,
            )
            return
        else:
            account_id = accounts.create(db, runtime.keyring, login=login, password_hash=None)
        actor = f"account:{account_id}"
        audit.append(
            db,
            actor=actor,
            action="identity.signup",
            outcome=Outcome.ALLOWED,
            target=actor,
            request_id=request_id,
        )
        email_verification.issue(
            db,
            runtime,
            email,
            account_id=account_id,
            purpose=email_verification.SIGNUP,
            to=login,
            pending_token=pending.token,
            password_hash=password_hash,
        )


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
        pending = await run_in_threadpool(
            sign_up,
            runtime,
            credentials,
            email=request.app.state.outward.email,
            **request_context(request),
        )
    except PasswordPolicyError as exc:
        return again({"password": str(exc)}, 400)
    except TooManyAttemptsError:
        return again({"form": signin.TOO_MANY}, 429)
    return signin.verification_redirect(runtime, pending, next_to)


@openapi.operation(
    answers={202: openapi.Json(signin.VerificationPending, "Check your email")},
    body=Credentials,
    problems=(429,),
    tags=("accounts",),
)
async def api_signup(request: Request) -> Response:
    """Create an account with an email address and a password

    The answer is the same whether or not the address already has an account: 202 and a
    `pending_token`. For a new address the account is created, not yet usable, and an
    e-mail with a link and a code goes to the address; `POST /api/v1/email/verify` with
    the code and the `pending_token` signs in (`next_step` then says what is still
    missing). For a taken address its owner gets a notice and nothing else changes. At
    most CAREBRIDGE_EMAILS_PER_ADDRESS_PER_HOUR e-mails go to one address. The password
    must be at least CAREBRIDGE_PASSWORD_MIN_LENGTH characters, not a commonly used one,
    and not contain the email address.

    - 400: A field is missing, malformed or too long, or the password is refused
    - 429: Too many sign-ups from this client address; try again later
    """
    credentials = await read_json(request, Credentials)
    try:
        pending = await run_in_threadpool(
            sign_up,
            request.app.state.runtime,
            credentials,
            email=request.app.state.outward.email,
            **request_context(request),
        )
    except PasswordPolicyError as exc:
        raise Problem(
            400,
            "The request body is not valid.",
            errors=[{"field": "password", "message": str(exc)}],
        ) from None
    except TooManyAttemptsError:
        raise Problem(429, signin.TOO_MANY) from None
    return signin.verification_pending(pending)


def routes() -> list[BaseRoute]:
    return [
        Route("/signup", signup_page, methods=["GET"], name="signup"),
        Route("/signup", signup_submit, methods=["POST"], name="signup_submit"),
        Route("/api/v1/signup", api_signup, methods=["POST"], name="api_signup"),
    ]
