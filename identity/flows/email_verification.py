"""Taking back what an e-mail verification sent: the code in the browser that asked, the
link anywhere, and adding an address to an account that signs in only through a provider.

- ``GET/POST /email/verify`` (page) and ``POST /api/v1/email/verify`` (JSON): the code,
  with the pending state sign-up or sign-in handed out (the ``carebridge_email_pending``
  cookie; the API's ``pending_token``). It grants nothing but typing this code. The
  right code marks the address verified, starts a session at level 1 and goes on like a
  sign-in: the second factor or its enrolment, then ``next`` (a pending ``/authorize``
  request resumes).
- ``GET/POST /email/confirm`` (page; the GET only shows a button, so a mail scanner
  fetching the link verifies nothing) and ``POST /api/v1/email/confirm``: the link's
  token verifies the address of the account it was sent for, and signs nobody in; a
  session the browser holds (perhaps another account's) is not touched. The page says
  what confirming does (a sign-up's link finishes that sign-up, with the password chosen
  for it) and offers "I didn't sign up" (``POST /email/decline``, ``POST
  /api/v1/email/decline``: identity/signup_decline.py), which cancels a sign-up nobody
  finished instead.
- ``GET/POST /account/email`` and ``POST /account/email/verify`` (pages),
  ``POST /api/v1/account/email`` and ``POST /api/v1/account/email/verify``: an account
  without a login address (upstream sign-in only), recently signed in (stepped up,
  where it has an authenticator: the address becomes its reset and recovery channel),
  adds one; it becomes the account's login, verified, only when the code (in its
  session) or the link comes back. An address another account has gets the same
  answer, and its owner the "someone tried" notice.

Every failure (no such pending state, a wrong, used, expired, voided, truncated or
another account's code or token) gets one answer. Codes and links are counted before
they are checked (identity/email_verification.py: per account and per client address),
and a verification is void after 5 wrong codes. Audited: ``identity.email.verify``
(allowed, failed, denied), ``identity.email.verify.void``, ``identity.email.add``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
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
from identity import accounts, authn, email_verification, sessions, signup_decline, throttle
from identity.credentials import totp
from identity.flows import mfa, signin
from identity.flows.signin import (
    Credentials,
    SessionStarted,
    SignedIn,
    TooManyAttemptsError,
    form_errors,
    form_text,
    next_path,
    request_context,
)
from identity.interfaces import EmailSender, Outward
from identity.models import AuthSession, EmailVerification, LoginIdentifier, PasswordCredential

templates = templates_for(Path(__file__).resolve().parents[1] / "templates")

CODE_FAILED = N_(
    "That code is not right, or it has expired or been used. Check the latest email we "
    "sent you, or sign in again to get a new code."
)
LINK_FAILED = N_(
    "This link is not valid: it may have expired or been used already. Sign in to get a new one."
)
ENTER_CODE = N_("Enter the code from the email.")
HAS_ADDRESS = N_("Your account already has an email address.")
_MAX_TOKEN = 200


class CodeFailedError(Exception):
    """No usable verification for this code here: one answer, whatever the reason."""


# Parsing


@openapi.component
class CodeEntry(BaseModel):
    """The code from the e-mail, with the pending token sign-up or sign-in answered."""

    model_config = ConfigDict(extra="forbid")

    pending_token: str = Field(min_length=1, max_length=_MAX_TOKEN)
    code: str = Field(min_length=1, max_length=64, description="As in the e-mail, e.g. 7KQ2-M9XD")


@openapi.component
class LinkToken(BaseModel):
    """The ``token`` of the link in the e-mail."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=_MAX_TOKEN)


@openapi.component
class AddedCode(BaseModel):
    """The code from the e-mail sent to the address being added."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=64)


@openapi.component
class EmailVerified(BaseModel):
    """The address is verified. Nobody was signed in by it."""

    verified: bool = True


@openapi.component
class EmailSent(BaseModel):
    """A code is on its way to the address (or, if another account has it, a notice to
    its owner: the answer is the same)."""

    next_step: Literal["verify_email"] = "verify_email"


# The service


def _audit(db: Session, action: str, outcome: Outcome, target: str, request_id: str | None) -> None:
    audit.append(
        db, actor="anonymous", action=action, outcome=outcome, target=target, request_id=request_id
    )


def _check(
    db: Session,
    runtime: Runtime,
    row: EmailVerification | None,
    code: str,
    *,
    address: throttle.Limit,
    request_id: str | None,
) -> tuple[bool, bool, list[throttle.Limit]]:
    """Count the attempt, then compare: (locked, used it, the limits counted)."""
    store = throttle.store_for(runtime.settings)
    now = throttle.utcnow()
    limits = [address]
    if row is not None:
        limits.append(email_verification.account_limit(row.account_id))
    target = f"account:{row.account_id}" if row is not None else address.key
    if store.attempt(db, limits, now) is None:
        _audit(db, "identity.email.verify", Outcome.DENIED, target, request_id)
        return True, False, limits
    live = email_verification.usable(row, now)
    matches = email_verification.code_matches(runtime, row, code) and live
    if (
        row is not None
        and matches
        and email_verification.claim(db, row, now)
        and email_verification.mark_verified(db, row, now)
    ):
        audit.append(
            db,
            actor=target,
            action="identity.email.verify",
            outcome=Outcome.ALLOWED,
            target=target,
            request_id=request_id,
        )
        return False, True, limits
    _audit(db, "identity.email.verify", Outcome.FAILED, target, request_id)
    if row is not None and live and not matches and email_verification.count_failure(db, row):
        _audit(db, "identity.email.verify.void", Outcome.DENIED, target, request_id)
    return False, False, limits


def _password_still_current(db: Session, row: EmailVerification) -> bool:
    """Whether a sign-in's code still stands for the password checked before it was sent.

    The session it starts records a password sign-in (what recovering a lost second
    factor asks for): a reset or a change of the password since then ended every
    session that password gave, and must end this one before it begins. A sign-up's
    password is the row's own, set when the code is used.
    """
    if row.purpose != email_verification.SIGNIN:
        return True
    changed_at = db.scalar(
        select(PasswordCredential.changed_at).where(PasswordCredential.account_id == row.account_id)
    )
    return changed_at is not None and changed_at <= row.created_at


def verify_code(
    runtime: Runtime,
    pending_token: str,
    code: str,
    *,
    client_host: str | None,
    user_agent: str = "",
    request_id: str | None = None,
    replacing_token: str | None = None,
) -> SignedIn:
    """The code typed where sign-up or sign-in asked for it: verified and signed in at
    level 1, or :class:`CodeFailedError` / :class:`TooManyAttemptsError`."""
    address = throttle.address_limit(runtime.keyring, client_host, email_verification.CODE_ADDRESS)
    store = throttle.store_for(runtime.settings)
    signed_in: SignedIn | None = None
    with transaction(runtime.sessions) as db:
        row = email_verification.by_pending(db, runtime, pending_token)
        # The session lock before the code's checks write anything (identity.sessions).
        lock = sessions.lock_account_sessions(db, row.account_id) if row is not None else None
        if row is not None and not _password_still_current(db, row):
            row = None  # what the password gave ended with it: the code does nothing
        locked, ok, limits = _check(db, runtime, row, code, address=address, request_id=request_id)
        if ok and lock is not None and lock.status == accounts.ACTIVE:
            signed_in = signin.start_session(
                db,
                runtime,
                lock,
                # The code comes only after a password: checked at sign-in, or chosen
                # at sign-up in this browser (the pending token's).
                first_factor=sessions.PASSWORD,
                action="identity.signin.email_code",
                user_agent=user_agent,
                request_id=request_id,
                replacing_token=replacing_token,
            )
            throttle.settle(store, db, reset=limits[1:], refund=limits[:1], now=throttle.utcnow())
    if locked:
        raise TooManyAttemptsError
    if signed_in is None:
        raise CodeFailedError
    return signed_in


def confirm_token(
    runtime: Runtime, token: str, *, client_host: str | None, request_id: str | None = None
) -> None:
    """The link's token: the address it was sent to is verified; nobody is signed in."""
    address = throttle.address_limit(runtime.keyring, client_host, email_verification.CODE_ADDRESS)
    store = throttle.store_for(runtime.settings)
    now = throttle.utcnow()
    confirmed = False
    with transaction(runtime.sessions) as db:
        if store.attempt(db, [address], now) is None:
            _audit(db, "identity.email.verify", Outcome.DENIED, address.key, request_id)
            locked = True
        else:
            locked = False
            row = email_verification.by_token(db, runtime, token)
            if (
                row is not None
                and email_verification.usable(row, now)
                and email_verification.claim(db, row, now)
                and email_verification.mark_verified(db, row, now)
            ):
                confirmed = True
                target = f"account:{row.account_id}"
                audit.append(
                    db,
                    actor="anonymous",
                    action="identity.email.verify",
                    outcome=Outcome.ALLOWED,
                    target=target,
                    request_id=request_id,
                )
                throttle.settle(store, db, reset=[], refund=[address], now=now)
            else:
                _audit(db, "identity.email.verify", Outcome.FAILED, address.key, request_id)
    if locked:
        raise TooManyAttemptsError
    if not confirmed:
        raise CodeFailedError


def has_address(runtime: Runtime, account_id: str) -> bool:
    with runtime.sessions() as db:
        found = db.scalar(
            select(LoginIdentifier.account_id).where(LoginIdentifier.account_id == account_id)
        )
    return found is not None


def may_add(runtime: Runtime, session: AuthSession) -> bool:
    """Adding an address gives the account a reset and recovery channel: with an
    authenticator, the second factor proved within ``step_up_minutes`` (as linking a
    sign-in method); without one, a recent sign-in (all such an account can prove)."""
    with runtime.sessions() as db:
        if totp.confirmed(db, session.account_id) is not None:
            return authn.is_stepped_up(session, runtime.settings)
    return authn.is_recent(session)


def add_address(
    runtime: Runtime,
    email: EmailSender,
    account_id: str,
    login: str,
    *,
    request_id: str | None = None,
) -> bool:
    """Send a code for ``login`` (normalised) to be added to an account without an
    address; False if the account already has one. An address another account has gets
    its owner the notice instead, and the same answer."""
    with transaction(runtime.sessions) as db:
        if db.get(LoginIdentifier, account_id) is not None:
            return False
        actor = f"account:{account_id}"
        found = accounts.find_by_login(db, runtime.keyring, login)
        if found is not None:
            email_verification.notify_taken(db, runtime, email, to=login)
        else:
            email_verification.issue(
                db,
                runtime,
                email,
                account_id=account_id,
                purpose=email_verification.ADD,
                to=login,
                pending_token=None,
            )
        audit.append(
            db,
            actor=actor,
            action="identity.email.add",
            outcome=Outcome.ALLOWED,
            target=actor,
            request_id=request_id,
        )
    return True


def verify_added(
    runtime: Runtime,
    account_id: str,
    code: str,
    *,
    client_host: str | None,
    request_id: str | None = None,
) -> None:
    """The code for the address being added, typed in the account's session."""
    address = throttle.address_limit(runtime.keyring, client_host, email_verification.CODE_ADDRESS)
    store = throttle.store_for(runtime.settings)
    with transaction(runtime.sessions) as db:
        row = email_verification.latest_added(db, account_id)
        locked, ok, limits = _check(db, runtime, row, code, address=address, request_id=request_id)
        if ok:
            throttle.settle(store, db, reset=limits[1:], refund=limits[:1], now=throttle.utcnow())
    if locked:
        raise TooManyAttemptsError
    if not ok:
        raise CodeFailedError


# Adapters


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _render(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
) -> Response:
    return templates.TemplateResponse(
        request,
        name,
        {"errors": {}, **context},
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


def _code_page(
    request: Request, next_to: str, errors: dict[str, str] | None = None, status_code: int = 200
) -> Response:
    return _render(
        request,
        "identity/email_verify.html",
        {"next": next_to, "errors": errors or {}},
        status_code=status_code,
    )


async def verify_page(request: Request) -> Response:
    return _code_page(request, next_path(request.query_params.get("next")))


async def verify_submit(request: Request) -> Response:
    form = await read_form(request)
    runtime = _runtime(request)
    next_to = next_path(form_text(form, "next"))
    code = form_text(form, "code")
    if not code.strip() or len(code) > 64:
        return _code_page(request, next_to, {"code": ENTER_CODE}, 400)
    pending = email_verification.presented_pending(request) or ""
    try:
        result = await run_in_threadpool(
            verify_code,
            runtime,
            pending[:_MAX_TOKEN],
            code,
            replacing_token=sessions.presented_token(request),
            **request_context(request),
        )
    except TooManyAttemptsError:
        return _code_page(request, next_to, {"form": signin.TOO_MANY}, 429)
    except CodeFailedError:
        return _code_page(request, next_to, {"form": CODE_FAILED}, 400)
    response = signin.signed_in_redirect(runtime, result, next_to)
    email_verification.clear_pending_cookie(response, runtime)
    return response


@openapi.operation(
    answers={200: openapi.Json(SessionStarted, "Verified and signed in at level 1")},
    body=CodeEntry,
    problems=(429,),
    tags=("accounts",),
)
async def api_verify(request: Request) -> Response:
    """Finish sign-up (or a sign-in asked to verify) with the code from the e-mail

    Takes the `pending_token` that `POST /api/v1/signup` or `POST /api/v1/signin` answered
    and the code the e-mail carried. The address is then verified and a session starts
    at level 1 (`next_step` says what is still missing). A wrong, used, expired or voided
    code, another account's code and an unknown pending token all get the same 400; the
    verification is void after 5 wrong codes.

    - 400: The body is not valid, or the code is not right or no longer usable
    - 429: Too many codes tried for this account or from this client address
    """
    body = await read_json(request, CodeEntry)
    try:
        result = await run_in_threadpool(
            verify_code,
            _runtime(request),
            body.pending_token,
            body.code,
            **request_context(request),
        )
    except TooManyAttemptsError:
        raise Problem(429, signin.TOO_MANY) from None
    except CodeFailedError:
        raise Problem(400, CODE_FAILED) from None
    return signin.session_started(result)


async def confirm_page(request: Request) -> Response:
    token = request.query_params.get("token", "")[:_MAX_TOKEN]
    return _render(request, "identity/email_confirm.html", {"token": token, "confirmed": False})


async def confirm_submit(request: Request) -> Response:
    form = await read_form(request)
    token = form_text(form, "token")[:_MAX_TOKEN]
    context = request_context(request)
    try:
        await run_in_threadpool(
            confirm_token,
            _runtime(request),
            token,
            client_host=context["client_host"],
            request_id=context["request_id"],
        )
    except TooManyAttemptsError:
        page = {"token": "", "confirmed": False, "errors": {"form": signin.TOO_MANY}}
        return _render(request, "identity/email_confirm.html", page, status_code=429)
    except CodeFailedError:
        page = {"token": "", "confirmed": False, "errors": {"form": LINK_FAILED}}
        return _render(request, "identity/email_confirm.html", page, status_code=400)
    return _render(request, "identity/email_confirm.html", {"token": "", "confirmed": True})


@openapi.operation(
    answers={200: openapi.Json(EmailVerified, "The address is verified")},
    body=LinkToken,
    problems=(429,),
    tags=("accounts",),
)
async def api_confirm(request: Request) -> Response:
    """Verify an address with the token of the e-mail's link

    Signs nobody in, and leaves any session the caller holds as it is. A used, expired,
    voided, truncated or unknown token gets the same 400.

    - 400: The body is not valid, or the token is not usable
    - 429: Too many tries from this client address
    """
    body = await read_json(request, LinkToken)
    context = request_context(request)
    try:
        await run_in_threadpool(
            confirm_token,
            _runtime(request),
            body.token,
            client_host=context["client_host"],
            request_id=context["request_id"],
        )
    except TooManyAttemptsError:
        raise Problem(429, signin.TOO_MANY) from None
    except CodeFailedError:
        raise Problem(400, LINK_FAILED) from None
    return JSONResponse(EmailVerified().model_dump(), headers={"Cache-Control": "no-store"})


def _outward(request: Request) -> Outward:
    outward: Outward = request.app.state.outward
    return outward


async def decline_submit(request: Request) -> Response:
    """ "I didn't sign up", the confirm page's second button."""
    form = await read_form(request)
    token = form_text(form, "token")[:_MAX_TOKEN]
    context = request_context(request)
    try:
        await run_in_threadpool(
            signup_decline.decline,
            _runtime(request),
            _outward(request),
            token,
            client_host=context["client_host"],
            request_id=context["request_id"],
        )
    except signup_decline.TooManyDeclinesError:
        page = {"token": "", "confirmed": False, "errors": {"form": signin.TOO_MANY}}
        return _render(request, "identity/email_confirm.html", page, status_code=429)
    except signup_decline.DeclineFailedError:
        page = {"token": "", "confirmed": False, "errors": {"form": LINK_FAILED}}
        return _render(request, "identity/email_confirm.html", page, status_code=400)
    page = {"token": "", "confirmed": False, "declined": True}
    return _render(request, "identity/email_confirm.html", page)


@openapi.operation(
    answers={204: openapi.Empty("Nothing was confirmed; an unfinished sign-up was cancelled")},
    body=LinkToken,
    problems=(429,),
    tags=("accounts",),
)
async def api_decline(request: Request) -> Response:
    """Decline an e-mail's link: "I didn't sign up"

    Uses the link up without verifying the address. If it is the link of a sign-up nobody
    finished, that sign-up is cancelled (the account and the password chosen for it are
    deleted), so a stranger's sign-up with someone else's address cannot be finished by
    its owner by mistake. Signs nobody in; the answer does not say what the link was for.
    A used, expired, voided, truncated or unknown token gets the same 400.

    - 400: The body is not valid, or the token is not usable
    - 429: Too many tries from this client address
    """
    body = await read_json(request, LinkToken)
    context = request_context(request)
    try:
        await run_in_threadpool(
            signup_decline.decline,
            _runtime(request),
            _outward(request),
            body.token,
            client_host=context["client_host"],
            request_id=context["request_id"],
        )
    except signup_decline.TooManyDeclinesError:
        raise Problem(429, signin.TOO_MANY) from None
    except signup_decline.DeclineFailedError:
        raise Problem(400, LINK_FAILED) from None
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


# Adding an address (accounts that sign in only through a provider)


def _add_page(
    request: Request,
    *,
    sent: bool = False,
    login: str = "",
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    page = {"sent": sent, "login": login, "errors": errors or {}}
    return _render(request, "identity/account_email.html", page, status_code=status_code)


async def add_submit(request: Request) -> Response:
    session = await authn.require(request)
    # Read first: crafted input is refused (400) whoever sends it, before the step-up.
    form = await read_form(request)
    if not await run_in_threadpool(may_add, _runtime(request), session):
        return mfa.reauth_redirect("/account/email")
    raw_login = form_text(form, "login")
    try:
        credentials = Credentials.model_validate({"login": raw_login, "password": "unused"})
    except ValidationError as exc:
        return _add_page(request, login=raw_login, errors=form_errors(exc), status_code=400)
    added = await run_in_threadpool(
        add_address,
        _runtime(request),
        request.app.state.outward.email,
        session.account_id,
        credentials.login,
        request_id=request_context(request)["request_id"],
    )
    if not added:
        return RedirectResponse("/account", status_code=303)
    return RedirectResponse("/account/email?sent=1", status_code=303)


async def add_verify_submit(request: Request) -> Response:
    session = await authn.require(request)
    form = await read_form(request)
    code = form_text(form, "code")
    if not code.strip() or len(code) > 64:
        return _add_page(request, sent=True, errors={"code": ENTER_CODE}, status_code=400)
    context = request_context(request)
    try:
        await run_in_threadpool(
            verify_added,
            _runtime(request),
            session.account_id,
            code,
            client_host=context["client_host"],
            request_id=context["request_id"],
        )
    except TooManyAttemptsError:
        return _add_page(request, sent=True, errors={"form": signin.TOO_MANY}, status_code=429)
    except CodeFailedError:
        return _add_page(request, sent=True, errors={"form": CODE_FAILED}, status_code=400)
    return RedirectResponse("/account", status_code=303)


async def add_page(request: Request) -> Response:
    session = await authn.require(request)
    if await run_in_threadpool(has_address, _runtime(request), session.account_id):
        return RedirectResponse("/account", status_code=303)
    return _add_page(request, sent=request.query_params.get("sent") == "1")


@openapi.component
class NewAddress(BaseModel):
    """An email address to add to an account that has none."""

    model_config = ConfigDict(extra="forbid")

    login: str = Field(
        default="",
        description="Email address",
        json_schema_extra={"format": "email", "maxLength": accounts.MAX_LOGIN_LENGTH},
    )


@openapi.operation(
    answers={202: openapi.Json(EmailSent, "Check your email")},
    security=openapi.session(),
    body=NewAddress,
    problems=(401, 403, 409),
    tags=("accounts",),
)
async def api_add(request: Request) -> Response:
    """Add an email address to an account that signs in only through a provider

    Needs a recent sign-in, and where the account has an authenticator a step-up (POST
    /api/v1/reauth with its code first). A code goes to the address; it
    becomes the account's email address, verified, once `POST /api/v1/account/email/verify`
    takes the code (or the e-mail's link is followed). An address another account has
    gets the same answer, and its owner a notice.

    - 400: The address is missing or malformed
    - 401: Not signed in
    - 403: Not signed in recently, or not stepped up: POST /api/v1/reauth first
    - 409: The account already has an email address
    """
    session = await authn.require(request)
    body = await read_json(request, NewAddress)  # crafted input: 400 before the step-up
    if not await run_in_threadpool(may_add, _runtime(request), session):
        raise mfa.reauth_problem()
    try:
        credentials = Credentials.model_validate({"login": body.login, "password": "unused"})
    except ValidationError as exc:
        errors = [{"field": f, "message": m} for f, m in form_errors(exc).items()]
        raise Problem(400, "The request body is not valid.", errors=errors) from None
    added = await run_in_threadpool(
        add_address,
        _runtime(request),
        request.app.state.outward.email,
        session.account_id,
        credentials.login,
        request_id=request_context(request)["request_id"],
    )
    if not added:
        raise Problem(409, HAS_ADDRESS)
    return JSONResponse(EmailSent().model_dump(), status_code=202)


@openapi.operation(
    answers={200: openapi.Json(EmailVerified, "The address is the account's, verified")},
    security=openapi.session(),
    body=AddedCode,
    problems=(401, 429),
    tags=("accounts",),
)
async def api_add_verify(request: Request) -> Response:
    """Confirm the address being added with the code from the e-mail

    A wrong, used, expired or voided code gets the same 400; 5 wrong codes void it.

    - 400: The code is not right or no longer usable
    - 401: Not signed in
    - 429: Too many codes tried for this account or from this client address
    """
    session = await authn.require(request)
    body = await read_json(request, AddedCode)
    context = request_context(request)
    try:
        await run_in_threadpool(
            verify_added,
            _runtime(request),
            session.account_id,
            body.code,
            client_host=context["client_host"],
            request_id=context["request_id"],
        )
    except TooManyAttemptsError:
        raise Problem(429, signin.TOO_MANY) from None
    except CodeFailedError:
        raise Problem(400, CODE_FAILED) from None
    return JSONResponse(EmailVerified().model_dump())


def routes() -> list[BaseRoute]:
    return [
        Route("/email/verify", verify_page, methods=["GET"], name="email_verify"),
        Route("/email/verify", verify_submit, methods=["POST"]),
        Route("/api/v1/email/verify", api_verify, methods=["POST"]),
        Route("/email/confirm", confirm_page, methods=["GET"], name="email_confirm"),
        Route("/email/confirm", confirm_submit, methods=["POST"]),
        Route("/api/v1/email/confirm", api_confirm, methods=["POST"]),
        Route("/email/decline", decline_submit, methods=["POST"]),
        Route("/api/v1/email/decline", api_decline, methods=["POST"]),
        Route("/account/email", add_page, methods=["GET"], name="account_email"),
        Route("/account/email", add_submit, methods=["POST"]),
        Route("/account/email/verify", add_verify_submit, methods=["POST"]),
        Route("/api/v1/account/email", api_add, methods=["POST"]),
        Route("/api/v1/account/email/verify", api_add_verify, methods=["POST"]),
    ]
