"""Forgot password: a new password by a link e-mailed to the account's verified address.

``GET/POST /password/forgot`` (page) and ``POST /api/v1/password/forgot`` (JSON) ask for
a link; ``GET /password/reset?token=…``, ``GET/POST /password/reset`` (page) and
``POST /api/v1/password/reset`` (JSON) use it.

Asking (:func:`admit_request`, then :func:`send_link`):

1. The address is checked and normalised like sign-in's; a malformed one (a line break
   smuggled in for a header, say) is refused with a form error, nothing queued.
2. The request counts against the client address (:data:`throttle.RESET_REQUEST_ADDRESS`):
   past its budget the asker is told to wait, whatever address they typed.
3. Everyone else gets the same answer ("if an account uses this address, we sent a
   link") at once, and the rest runs after the answer has gone (a background task): the
   account looked up by the address's lookup hash, the address's e-mail budget counted
   (at most ``CAREBRIDGE_EMAILS_PER_ADDRESS_PER_HOUR`` e-mails an hour, of any kind,
   known address or not), and
   only for an active account whose address is verified, a link. So neither the answer,
   its status nor its timing depends on whether the account exists, is verified, or is
   past its budget.

The link's token is ``<selector>.<secret>``: the selector is the ``password_reset`` row's
ID, the secret 256 random bits (``secrets.token_urlsafe(32)``); the row keeps only the
keyed hash of the whole token, compared in constant time. 30 minutes, single use, and a
newer link ends the account's older unused ones.

Using it (:func:`check`, :func:`reset_password`): the page moves the token out of the
address bar into a short-lived HttpOnly cookie (a redirect with ``Referrer-Policy:
no-referrer``). Every presentation counts against the client address, and one naming a
real link against its account (:data:`throttle.RESET_TOKEN_ADDRESS`,
:data:`throttle.RESET_TOKEN_ACCOUNT`). An unknown, truncated, expired, used or superseded
link gets one answer. The new password meets sign-up's policy. Then, in one transaction:
the password replaced, the link used, every session of the account ended, every grant
it gave an app ended (identity.oidc.withdrawals, as disabling an account does), a notice
queued to the address, the reset audited. Nobody is signed in, and the second factor is
untouched: the next sign-in asks for it. A reset proves the mailbox, not the person.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.http import cookies, openapi
from carebridge.http.forms import read_form, read_json
from carebridge.http.problems import Problem
from carebridge.i18n import N_
from carebridge.runtime import Runtime
from identity import accounts, email_change, emails, sessions, throttle
from identity.credentials import password
from identity.flows.signin import (
    PASSWORD_TOO_LONG,
    TOO_MANY,
    TooManyAttemptsError,
    form_errors,
    form_text,
    request_context,
    templates,
)
from identity.flows.signup import PasswordPolicyError
from identity.interfaces import EmailSender, Outward
from identity.models import Account, LoginIdentifier, PasswordCredential, PasswordReset, new_id
from identity.oidc import backchannel, withdrawals

log = logging.getLogger(__name__)

VALID_FOR = timedelta(minutes=30)
PAGE = "/password/reset"
FORGOT_PAGE = "/password/forgot"
_SELECTOR = "pwr"
# A whole token: the selector (new_id: prefix, 22 characters) and 43 for 256 bits.
_TOKEN = re.compile(r"pwr_[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}")
MAX_TOKEN_LENGTH = 200

CHECK_EMAIL = N_(
    "If an account uses this email address, and the address has been confirmed, we have "
    "sent it a link to choose a new password. The link works for 30 minutes. If nothing "
    "arrives, check your spam folder, or ask again in a while."
)
LINK_INVALID = N_(
    "This link to reset your password does not work. It may have expired, been used "
    "already, been replaced by a newer link, or been copied incompletely. Ask for a new one."
)
ENTER_PASSWORD = N_("Enter a new password.")


class InvalidLinkError(Exception):
    """Unknown, malformed, expired, used, superseded, or its account throttled: one answer."""


# Parsing


def _login(value: str) -> str:
    # As sign-in checks it (identity.flows.signin.Credentials): one normalised address.
    if len(value) > 4 * accounts.MAX_LOGIN_LENGTH:
        raise PydanticCustomError("login", accounts.LOGIN_TOO_LONG)
    login = accounts.normalise_login(value)
    problem = accounts.login_problem(login)
    if problem:
        raise PydanticCustomError("login", problem)
    return login


@openapi.component
class ForgotPassword(BaseModel):
    """The email address an account signs in with."""

    model_config = ConfigDict(extra="forbid")

    login: str = Field(
        default="",
        description="Email address",
        json_schema_extra={"format": "email", "maxLength": accounts.MAX_LOGIN_LENGTH},
    )

    @field_validator("login")
    @classmethod
    def _check_login(cls, value: str) -> str:
        return _login(value)


@openapi.component
class ResetRequested(BaseModel):
    """The same answer whether or not an account uses the address."""

    detail: str


@openapi.component
class NewPassword(BaseModel):
    """The token from the e-mailed link and the new password."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(default="", json_schema_extra={"maxLength": MAX_TOKEN_LENGTH})
    password: str = Field(default="", json_schema_extra={"maxLength": password.MAX_LENGTH})

    @field_validator("token")
    @classmethod
    def _token(cls, value: str) -> str:
        # Its shape is checked by the service, with the rest: one answer for any bad link.
        if len(value) > MAX_TOKEN_LENGTH:
            raise PydanticCustomError("token", LINK_INVALID)
        return value

    @field_validator("password")
    @classmethod
    def _password(cls, value: str) -> str:
        if not value:
            raise PydanticCustomError("password", ENTER_PASSWORD)
        if len(value) > password.MAX_LENGTH:
            raise PydanticCustomError("password", PASSWORD_TOO_LONG)
        return value


# The service: tokens


def _hash(runtime: Runtime, token: str) -> str:
    return runtime.keyring.lookup_hash("password-reset", token)


def _end_unused(db: Session, account_id: str, now: datetime) -> None:
    """The account's unused links stop working now."""
    db.execute(
        update(PasswordReset)
        .where(
            PasswordReset.account_id == account_id,
            PasswordReset.used_at.is_(None),
            PasswordReset.expires_at > now,
        )
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )


def issue(db: Session, runtime: Runtime, account_id: str, now: datetime) -> str:
    """A new link's token for the account, in the caller's transaction (ending the older
    unused ones). The token exists only in what this returns."""
    _end_unused(db, account_id, now)
    selector = new_id(_SELECTOR)
    token = f"{selector}.{secrets.token_urlsafe(32)}"
    db.add(
        PasswordReset(
            id=selector,
            account_id=account_id,
            secret_hash=_hash(runtime, token),
            created_at=now,
            expires_at=now + VALID_FOR,
        )
    )
    db.flush()
    return token


def link(runtime: Runtime, token: str) -> str:
    return f"{runtime.settings.issuer}{PAGE}?token={token}"


def last_password_reset_at(db: Session, account_id: str) -> datetime | None:
    """When the account's password was last reset through an e-mailed link (None: never).

    Recovery by re-proving identity (date of birth and SSN last 4 against the roster) is
    refused within 7 days of a reset: a reset proves only the mailbox, and whoever holds
    the mailbox must not also be able to replace the second factor at once. Read in the
    caller's transaction.
    """
    return db.scalar(
        select(func.max(PasswordReset.used_at)).where(
            PasswordReset.account_id == account_id, PasswordReset.used_at.is_not(None)
        )
    )


# The service: asking for a link


def _mail_limit(runtime: Runtime, login: str) -> throttle.Limit:
    # One e-mail budget per address for every identity e-mail (identity.email_verification).
    policy = throttle.EMAIL_TO
    return throttle.Limit(policy, f"{policy.prefix}:{accounts.login_hash(runtime.keyring, login)}")


def admit_request(runtime: Runtime, *, client_host: str | None, request_id: str | None) -> None:
    """Count a request for a link against the client address; TooManyAttemptsError past
    its budget (the same for any address typed). Audited when refused."""
    store = throttle.store_for(runtime.settings)
    limit = throttle.address_limit(runtime.keyring, client_host, throttle.RESET_REQUEST_ADDRESS)
    with transaction(runtime.sessions) as db:
        counts = store.attempt(db, [limit], throttle.utcnow())
        if counts is None:
            audit.append(
                db,
                actor="anonymous",
                action="identity.password.forgot",
                outcome=Outcome.DENIED,
                target=limit.key,
                request_id=request_id,
            )
    if counts is None:
        raise TooManyAttemptsError


_ACCOUNT_OF_LOGIN = select(
    LoginIdentifier.account_id,
    LoginIdentifier.verified_at,
    LoginIdentifier.changed_at,
    Account.status,
).join(Account, Account.id == LoginIdentifier.account_id)


def send_link(
    runtime: Runtime, sender: EmailSender, login: str, *, request_id: str | None = None
) -> bool:
    """E-mail a link to ``login`` (normalised) if an active account signs in with it, the
    address is verified, and it has had fewer than CAREBRIDGE_EMAILS_PER_ADDRESS_PER_HOUR
    e-mails this hour, and the address did not replace the account's previous one less
    than 7 days ago (identity/email_change.py: whoever changed the address must not
    reset the password through it while the old address can still undo the change).
    Returns whether one was queued; the caller's answer must not depend on it. Audited:
    allowed (sent), failed (no such account, unverified, disabled; recently changed
    address as ``identity.password.forgot.email_changed``), denied (budget)."""
    store = throttle.store_for(runtime.settings)
    limit = _mail_limit(runtime, login)
    now = throttle.utcnow()
    with transaction(runtime.sessions) as db:
        lookup_hash = accounts.login_hash(runtime.keyring, login)
        found = db.execute(
            _ACCOUNT_OF_LOGIN.where(LoginIdentifier.lookup_hash == lookup_hash)
        ).first()
        counted = store.attempt_gated(
            db, [limit], now, {limit.key: runtime.settings.emails_per_address_per_hour}
        )
        target = f"account:{found.account_id}" if found is not None else limit.key
        eligible = (
            found is not None and found.verified_at is not None and found.status == accounts.ACTIVE
        )
        outcome = Outcome.FAILED  # no such account, unverified, disabled
        action = "identity.password.forgot"
        if isinstance(counted, throttle.Refused):
            outcome = Outcome.DENIED
        elif (
            found is not None and eligible and email_change.recently_changed(found.changed_at, now)
        ):
            action = "identity.password.forgot.email_changed"
        elif found is not None and eligible:
            # To the address on record, never to what was typed.
            address = accounts.login_of(db, runtime.keyring, found.account_id)
            if address is not None:
                outcome = Outcome.ALLOWED
                token = issue(db, runtime, found.account_id, now)
                emails.send(
                    db,
                    sender,
                    runtime.settings,
                    to=address,
                    email=emails.Email(
                        "password_reset",
                        link=link(runtime, token),
                        minutes=int(VALID_FOR.total_seconds() // 60),
                    ),
                )
        audit.append(
            db,
            actor="anonymous",
            action=action,
            outcome=outcome,
            target=target,
            request_id=request_id,
        )
    return outcome is Outcome.ALLOWED


def send_link_after_answer(
    runtime: Runtime, sender: EmailSender, login: str, request_id: str | None
) -> None:
    """:func:`send_link` for a background task: the answer has gone, so a failure (the
    database unreachable) can only be logged, without the address."""
    try:
        send_link(runtime, sender, login, request_id=request_id)
    except Exception:
        log.exception("password reset link not queued", extra={"request_id": request_id})


# The service: using a link


@dataclass(frozen=True)
class Ticket:
    """A link that works: its row and its account."""

    reset_id: str
    account_id: str


def check(
    runtime: Runtime, token: str, *, client_host: str | None, request_id: str | None
) -> Ticket:
    """The link ``token`` names, if it works; else InvalidLinkError (whatever is wrong
    with it) or TooManyAttemptsError (the client address is past its budget).

    Counted against the client address, and, once it names a link, against that link's
    account; a link that works takes both back."""
    store = throttle.store_for(runtime.settings)
    address = throttle.address_limit(runtime.keyring, client_host, throttle.RESET_TOKEN_ADDRESS)
    now = throttle.utcnow()
    ticket: Ticket | None = None
    locked = False
    with transaction(runtime.sessions) as db:
        target = "password-reset"
        outcome = Outcome.FAILED
        if store.attempt(db, [address], now) is None:
            locked = True
            outcome = Outcome.DENIED
            target = address.key
        else:
            row = (
                db.get(PasswordReset, token.partition(".")[0]) if _TOKEN.fullmatch(token) else None
            )
            if row is not None:
                target = f"account:{row.account_id}"
                account = throttle.Limit(
                    throttle.RESET_TOKEN_ACCOUNT,
                    f"{throttle.RESET_TOKEN_ACCOUNT.prefix}:{row.account_id}",
                )
                status = db.scalar(select(Account.status).where(Account.id == row.account_id))
                if store.attempt(db, [account], now) is None:
                    outcome = Outcome.DENIED
                elif (
                    secrets.compare_digest(row.secret_hash, _hash(runtime, token))
                    and row.used_at is None
                    and row.expires_at > now
                    and status == accounts.ACTIVE
                ):
                    ticket = Ticket(row.id, row.account_id)
                    throttle.settle(store, db, reset=[account], refund=[address], now=now)
        if ticket is None:
            audit.append(
                db,
                actor="anonymous",
                action="identity.password.reset_link",
                outcome=outcome,
                target=target,
                request_id=request_id,
            )
    if locked:
        raise TooManyAttemptsError
    if ticket is None:
        raise InvalidLinkError
    return ticket


def reset_password(
    runtime: Runtime,
    sender: EmailSender,
    token: str,
    new_password: str,
    *,
    client_host: str | None,
    request_id: str | None = None,
) -> str:
    """Set a new password with a link (run it in the thread pool: it hashes); returns the
    account ID. Raises as :func:`check` does, or PasswordPolicyError (the link still
    works). Signs nobody in."""
    ticket = check(runtime, token, client_host=client_host, request_id=request_id)
    with runtime.sessions() as db:
        login = accounts.login_of(db, runtime.keyring, ticket.account_id)
    problem = password.policy_problem(
        new_password, login=login or "", min_length=runtime.settings.password_min_length
    )
    if problem:
        raise PasswordPolicyError(problem)
    new_hash = password.hash_password(runtime.settings, new_password)
    now = throttle.utcnow()
    account_id = ticket.account_id
    actor = f"account:{account_id}"
    with transaction(runtime.sessions) as db:
        # The reset ends every session: the session lock first (identity.sessions). It
        # also holds off an operator's disabling (which takes it too) until this commits,
        # and the status read under it is current: the account may be disabled since check().
        lock = sessions.lock_account_sessions(db, account_id)
        # The claim: one conditional UPDATE, so two uses racing cannot both pass.
        claimed = 0
        if lock is not None and lock.status == accounts.ACTIVE:
            claimed = db.execute(
                update(PasswordReset)
                .where(
                    PasswordReset.id == ticket.reset_id,
                    PasswordReset.used_at.is_(None),
                    PasswordReset.expires_at > now,
                )
                .values(used_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        if claimed and lock is not None:
            _apply(db, runtime, sender, lock, new_hash=new_hash, now=now, login=login)
        audit.append(
            db,
            actor=actor if claimed else "anonymous",
            action="identity.password.reset",
            outcome=Outcome.ALLOWED if claimed else Outcome.FAILED,
            target=actor,
            request_id=request_id,
        )
    if not claimed:
        raise InvalidLinkError
    return account_id


def _apply(
    db: Session,
    runtime: Runtime,
    sender: EmailSender,
    lock: sessions.AccountLock,
    *,
    new_hash: str,
    now: datetime,
    login: str | None,
) -> None:
    account_id = lock.account_id
    credential = db.get(PasswordCredential, account_id, with_for_update=True)
    if credential is None:
        db.add(PasswordCredential(account_id=account_id, hash=new_hash, changed_at=now))
    else:
        credential.hash = new_hash
        credential.changed_at = now
    _end_unused(db, account_id, now)
    email_change.end_pending(db, account_id, now)
    # Whoever knew the old password (or held a session or an app's token) is out.
    sessions.revoke_all(db, lock)
    backchannel.queue(db, account_id)
    withdrawals.end_grants(db, account_id)
    if login:
        emails.send(
            db,
            sender,
            runtime.settings,
            to=login,
            email=emails.Email(
                "password_reset_done", link=f"{runtime.settings.issuer}{FORGOT_PAGE}"
            ),
        )


# Adapters


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _sender(request: Request) -> EmailSender:
    outward: Outward = request.app.state.outward
    return outward.email


def _cookie_name(runtime: Runtime) -> str:
    return cookies.PASSWORD_RESET.name(runtime.settings.issuer_is_https)


def _forgot_page(
    request: Request,
    *,
    login: str = "",
    errors: dict[str, str] | None = None,
    sent: bool = False,
    status_code: int = 200,
    background: BackgroundTask | None = None,
) -> Response:
    return templates.TemplateResponse(
        request,
        "identity/password_forgot.html",
        {"login": login, "errors": errors or {}, "sent": sent, "check_email": CHECK_EMAIL},
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
        background=background,
    )


async def forgot_page(request: Request) -> Response:
    return _forgot_page(request)


async def forgot_submit(request: Request) -> Response:
    form = await read_form(request)
    raw_login = form_text(form, "login")
    try:
        asked = ForgotPassword.model_validate({"login": raw_login})
    except ValidationError as exc:
        return _forgot_page(request, login=raw_login, errors=form_errors(exc), status_code=400)
    runtime = _runtime(request)
    context = request_context(request)
    try:
        await run_in_threadpool(
            admit_request,
            runtime,
            client_host=context["client_host"],
            request_id=context["request_id"],
        )
    except TooManyAttemptsError:
        return _forgot_page(request, login=raw_login, errors={"form": TOO_MANY}, status_code=429)
    task = BackgroundTask(
        send_link_after_answer, runtime, _sender(request), asked.login, context["request_id"]
    )
    return _forgot_page(request, sent=True, background=task)


@openapi.operation(
    answers={202: openapi.Json(ResetRequested, "The same answer for any address")},
    body=ForgotPassword,
    problems=(429,),
    tags=("accounts",),
)
async def api_forgot(request: Request) -> Response:
    """Ask for a link to reset a forgotten password

    Answers 202 at once, the same whether or not an account uses the address; the link
    (valid 30 minutes) is e-mailed afterwards, only if an active account signs in with
    this address and has confirmed it, and at most a few times an hour per address.

    - 400: The email address is missing or malformed
    - 429: Too many requests from this client address; try again later
    """
    asked = await read_json(request, ForgotPassword)
    runtime = _runtime(request)
    context = request_context(request)
    try:
        await run_in_threadpool(
            admit_request,
            runtime,
            client_host=context["client_host"],
            request_id=context["request_id"],
        )
    except TooManyAttemptsError:
        raise Problem(429, TOO_MANY) from None
    task = BackgroundTask(
        send_link_after_answer, runtime, _sender(request), asked.login, context["request_id"]
    )
    body = ResetRequested(detail=CHECK_EMAIL)
    return JSONResponse(
        body.model_dump(), status_code=202, headers={"Cache-Control": "no-store"}, background=task
    )


def _result_page(
    request: Request, *, done: bool, status_code: int, message: str = LINK_INVALID
) -> Response:
    response = templates.TemplateResponse(
        request,
        "identity/password_reset_result.html",
        {"done": done, "message": message},
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )
    runtime = _runtime(request)
    # With the attributes it was set with: browsers ignore a __Secure- cookie's clearing
    # that lacks Secure, and the token would stay in the jar.
    response.delete_cookie(
        _cookie_name(runtime),
        path=PAGE,
        httponly=True,
        samesite="lax",
        secure=runtime.settings.issuer_is_https,
    )
    return response


def _form_page(
    request: Request, *, errors: dict[str, str] | None = None, status_code: int = 200
) -> Response:
    runtime = _runtime(request)
    return templates.TemplateResponse(
        request,
        "identity/password_reset.html",
        {
            "errors": errors or {},
            "min_length": runtime.settings.password_min_length,
            "max_length": password.MAX_LENGTH,
        },
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


def _open_link(request: Request) -> Response:
    """The link from the e-mail: its token into a cookie, the address bar cleaned."""
    runtime = _runtime(request)
    token = request.query_params.get("token", "")[:MAX_TOKEN_LENGTH]
    response = RedirectResponse(PAGE, status_code=303)
    # The token is in this request's URL: no Referer may carry it anywhere.
    response.headers["referrer-policy"] = "no-referrer"
    response.set_cookie(
        _cookie_name(runtime),
        token,
        max_age=int(VALID_FOR.total_seconds()),
        path=PAGE,
        httponly=True,
        samesite="lax",
        secure=runtime.settings.issuer_is_https,
    )
    return response


async def reset_page(request: Request) -> Response:
    if "token" in request.query_params:
        return _open_link(request)
    runtime = _runtime(request)
    token = request.cookies.get(_cookie_name(runtime), "")
    context = request_context(request)
    try:
        await run_in_threadpool(
            check,
            runtime,
            token,
            client_host=context["client_host"],
            request_id=context["request_id"],
        )
    except TooManyAttemptsError:
        return _result_page(request, done=False, status_code=429, message=TOO_MANY)
    except InvalidLinkError:
        return _result_page(request, done=False, status_code=400)
    return _form_page(request)


async def reset_submit(request: Request) -> Response:
    form = await read_form(request)
    runtime = _runtime(request)
    token = request.cookies.get(_cookie_name(runtime), "")
    new_password = form_text(form, "password")
    if not new_password or len(new_password) > password.MAX_LENGTH:
        problem = ENTER_PASSWORD if not new_password else PASSWORD_TOO_LONG
        return _form_page(request, errors={"password": problem}, status_code=400)
    try:
        await run_in_threadpool(
            reset_password, runtime, _sender(request), token, new_password, **_context(request)
        )
    except PasswordPolicyError as exc:
        return _form_page(request, errors={"password": str(exc)}, status_code=400)
    except TooManyAttemptsError:
        return _result_page(request, done=False, status_code=429, message=TOO_MANY)
    except InvalidLinkError:
        return _result_page(request, done=False, status_code=400)
    return _result_page(request, done=True, status_code=200)


def _context(request: Request) -> dict[str, Any]:
    context = request_context(request)
    return {"client_host": context["client_host"], "request_id": context["request_id"]}


@openapi.operation(
    answers={204: openapi.Empty("Password changed; every session and app grant ended")},
    body=NewPassword,
    problems=(429,),
    tags=("accounts",),
)
async def api_reset(request: Request) -> Response:
    """Set a new password with the token of an e-mailed link

    The token is the `token` parameter of the link. The new password meets the same rules
    as at sign-up. On success every session of the account ends, every grant it gave an
    app is withdrawn, and a notice goes to the address; nobody is signed in, and the next
    sign-in still asks for the second factor. An unknown, malformed, expired, used or
    replaced token gets one 400 answer.

    - 400: The token does not work, or the new password is missing or refused
    - 429: Too many attempts from this client address; try again later
    """
    body = await read_json(request, NewPassword)
    try:
        await run_in_threadpool(
            reset_password,
            _runtime(request),
            _sender(request),
            body.token,
            body.password,
            **_context(request),
        )
    except PasswordPolicyError as exc:
        raise Problem(
            400,
            "The request body is not valid.",
            errors=[{"field": "password", "message": str(exc)}],
        ) from None
    except TooManyAttemptsError:
        raise Problem(429, TOO_MANY) from None
    except InvalidLinkError:
        raise Problem(400, LINK_INVALID) from None
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


def routes() -> list[BaseRoute]:
    return [
        Route(FORGOT_PAGE, forgot_page, methods=["GET"], name="password_forgot"),
        Route(FORGOT_PAGE, forgot_submit, methods=["POST"], name="password_forgot_submit"),
        Route(PAGE, reset_page, methods=["GET"], name="password_reset"),
        Route(PAGE, reset_submit, methods=["POST"], name="password_reset_submit"),
        Route("/api/v1/password/forgot", api_forgot, methods=["POST"], name="api_password_forgot"),
        Route("/api/v1/password/reset", api_reset, methods=["POST"], name="api_password_reset"),
    ]
