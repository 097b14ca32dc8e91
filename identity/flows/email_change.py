"""Changing the e-mail address, and undoing it: the pages and the JSON API of
identity/email_change.py.

- ``GET/POST /account/email/change`` and ``POST /api/v1/account/email/change``: a
  stepped-up session names the new address (pages go to ``/reauth`` first, the API
  answers 403 with ``step_up``). The answer is the same whether the address is free or
  another account's.
- ``POST /account/email/change/verify`` and ``POST /api/v1/account/email/change/verify``:
  the code from the e-mail, in the session that asked.
- ``GET/POST /email/change/confirm`` and ``POST /api/v1/email/change/confirm``: the
  link, in any browser (the GET only shows a button, so a mail scanner changes nothing).
- ``GET/POST /email/undo`` and ``POST /api/v1/email/undo``: the undo link sent to the
  old address, with a new password; no sign-in needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge.http import openapi
from carebridge.http.forms import read_form, read_json
from carebridge.http.problems import Problem
from carebridge.http.templates import templates_for
from carebridge.i18n import N_
from carebridge.runtime import Runtime
from identity import accounts, authn, email_change
from identity.credentials import password
from identity.email_change import (
    AddressTakenError,
    FailedError,
    PolicyError,
    Result,
    TooManyError,
)
from identity.flows import mfa, signin
from identity.flows.signin import Credentials, form_errors, form_text, request_context
from identity.interfaces import EmailSender
from identity.models import AuthSession

templates = templates_for(Path(__file__).resolve().parents[1] / "templates")

PAGE = "/account/email/change"
CODE_FAILED = N_(
    "That code is not right, or it has expired or been used. Check the latest email we "
    "sent to the new address, or ask for a new code."
)
LINK_FAILED = N_(
    "This link does not work: it may have expired, been used already, been replaced by a "
    "newer one, or been copied incompletely."
)
UNDO_FAILED = N_(
    "This link to undo the change of email address does not work: it may have expired "
    "(it works for 7 days), been used already, or been copied incompletely. If someone "
    "else changed your address, reset your password or contact support."
)
ADDRESS_TAKEN = N_(
    "Your previous email address now belongs to another account, so it cannot be "
    "restored. Contact support to get your account back."
)
SAME_ADDRESS = N_("That is already your email address.")
ENTER_CODE = N_("Enter the code from the email.")
ENTER_PASSWORD = N_("Enter a new password.")
NO_ADDRESS = N_("Your account has no email address yet: add one instead.")


# Parsing


@openapi.component
class NewEmail(BaseModel):
    """The new email address."""

    model_config = ConfigDict(extra="forbid")

    login: str = Field(
        default="",
        description="Email address",
        json_schema_extra={"format": "email", "maxLength": accounts.MAX_LOGIN_LENGTH},
    )


@openapi.component
class ChangeCode(BaseModel):
    """The code from the e-mail sent to the new address."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=64, description="As in the e-mail, e.g. 7KQ2-M9XD")


@openapi.component
class ChangeLink(BaseModel):
    """The ``token`` of the link in the e-mail sent to the new address."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=email_change.MAX_TOKEN_LENGTH)


@openapi.component
class UndoChange(BaseModel):
    """The ``token`` of the undo link sent to the old address, and a new password."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=email_change.MAX_TOKEN_LENGTH)
    new_password: str = Field(min_length=1, max_length=password.MAX_LENGTH)


@openapi.component
class ChangeRequested(BaseModel):
    """A code is on its way to the new address (or, if another account has it, a notice
    to its owner: the answer is the same)."""

    next_step: Literal["verify_email"] = "verify_email"


@openapi.component
class EmailChanged(BaseModel):
    """The new address is the account's sign-in address, verified."""

    changed: bool = True


def _parse_login(raw: str) -> tuple[str, dict[str, str]]:
    try:
        credentials = Credentials.model_validate({"login": raw, "password": "unused"})
    except ValidationError as exc:
        return "", form_errors(exc)
    return credentials.login, {}


# Adapters


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _sender(request: Request) -> EmailSender:
    sender: EmailSender = request.app.state.outward.email
    return sender


def _context(request: Request) -> dict[str, Any]:
    context = request_context(request)
    return {"client_host": context["client_host"], "request_id": context["request_id"]}


def _render(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
) -> Response:
    # The undo and confirm pages hold a token in their URL: the site's Referrer-Policy
    # (same-origin) keeps it from leaving the site; no-referrer would make their forms
    # post ``Origin: null``, which the CSRF check refuses.
    return templates.TemplateResponse(
        request,
        name,
        {"errors": {}, **context},
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


def _change_page(
    request: Request,
    *,
    sent: bool = False,
    login: str = "",
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    page = {"sent": sent, "login": login, "errors": errors or {}}
    return _render(request, "identity/account_email_change.html", page, status_code=status_code)


async def _request(request: Request, session: AuthSession, login: str) -> email_change.Requested:
    return await run_in_threadpool(
        lambda: email_change.request_change(
            _runtime(request), _sender(request), session, login, **_context(request)
        )
    )


async def change_page(request: Request) -> Response:
    session = await authn.require(request)
    if request.query_params.get("sent") == "1":
        return _change_page(request, sent=True)
    await authn.require_step_up(request, session, next_path=PAGE)
    return _change_page(request)


async def change_submit(request: Request) -> Response:
    session = await authn.require(request)
    form = await read_form(request)
    raw_login = form_text(form, "login")
    login, errors = _parse_login(raw_login)
    if errors:
        return _change_page(request, login=raw_login, errors=errors, status_code=400)
    try:
        requested = await _request(request, session, login)
    except TooManyError:
        errors = {"form": signin.TOO_MANY}
        return _change_page(request, login=raw_login, errors=errors, status_code=429)
    if requested.outcome is Result.STEP_UP:
        raise authn.step_up_needed(request, requested.step, PAGE)
    if requested.outcome is Result.GONE:
        return mfa.signin_redirect(request)
    if requested.outcome is Result.NO_ADDRESS:
        return RedirectResponse("/account/email", status_code=303)
    if requested.outcome is Result.SAME:
        errors = {"login": SAME_ADDRESS}
        return _change_page(request, login=raw_login, errors=errors, status_code=400)
    return RedirectResponse(f"{PAGE}?sent=1", status_code=303)


async def _confirm_code(request: Request, session: AuthSession, code: str) -> None:
    await run_in_threadpool(
        lambda: email_change.confirm_code(
            _runtime(request), _sender(request), session, code, **_context(request)
        )
    )


async def verify_submit(request: Request) -> Response:
    session = await authn.require(request)
    form = await read_form(request)
    code = form_text(form, "code")
    if not code.strip() or len(code) > 64:
        return _change_page(request, sent=True, errors={"code": ENTER_CODE}, status_code=400)
    try:
        await _confirm_code(request, session, code)
    except TooManyError:
        return _change_page(request, sent=True, errors={"form": signin.TOO_MANY}, status_code=429)
    except FailedError:
        return _change_page(request, sent=True, errors={"form": CODE_FAILED}, status_code=400)
    return RedirectResponse("/account?done=email", status_code=303)


async def _confirm_link(request: Request, token: str) -> None:
    await run_in_threadpool(
        lambda: email_change.confirm_link(
            _runtime(request), _sender(request), token, **_context(request)
        )
    )


def _confirm_result(
    request: Request, *, token: str = "", done: bool = False, error: str = "", status: int = 200
) -> Response:
    page = {"token": token, "done": done, "errors": {"form": error} if error else {}}
    return _render(request, "identity/email_change_confirm.html", page, status_code=status)


async def confirm_page(request: Request) -> Response:
    token = request.query_params.get("token", "")[: email_change.MAX_TOKEN_LENGTH]
    return _confirm_result(request, token=token)


async def confirm_submit(request: Request) -> Response:
    form = await read_form(request)
    token = form_text(form, "token")[: email_change.MAX_TOKEN_LENGTH]
    try:
        await _confirm_link(request, token)
    except TooManyError:
        return _confirm_result(request, error=signin.TOO_MANY, status=429)
    except FailedError:
        return _confirm_result(request, error=LINK_FAILED, status=400)
    return _confirm_result(request, done=True)


def _undo_page(
    request: Request,
    *,
    token: str = "",
    state: str = "form",
    errors: dict[str, str] | None = None,
    message: str = "",
    status_code: int = 200,
) -> Response:
    runtime = _runtime(request)
    page = {
        "token": token,
        "state": state,
        "message": message,
        "errors": errors or {},
        "min_length": runtime.settings.password_min_length,
        "max_length": password.MAX_LENGTH,
    }
    return _render(request, "identity/email_undo.html", page, status_code=status_code)


async def undo_page(request: Request) -> Response:
    token = request.query_params.get("token", "")[: email_change.MAX_TOKEN_LENGTH]
    try:
        await run_in_threadpool(
            lambda: email_change.check_undo(_runtime(request), token, **_context(request))
        )
    except TooManyError:
        return _undo_page(request, state="failed", message=signin.TOO_MANY, status_code=429)
    except FailedError:
        return _undo_page(request, state="failed", message=UNDO_FAILED, status_code=400)
    return _undo_page(request, token=token)


async def _undo(request: Request, token: str, new_password: str) -> None:
    await run_in_threadpool(
        lambda: email_change.undo(
            _runtime(request), _sender(request), token, new_password, **_context(request)
        )
    )


async def undo_submit(request: Request) -> Response:
    form = await read_form(request)
    token = form_text(form, "token")[: email_change.MAX_TOKEN_LENGTH]
    new_password = form_text(form, "new_password")
    if not new_password or len(new_password) > password.MAX_LENGTH:
        problem = ENTER_PASSWORD if not new_password else signin.PASSWORD_TOO_LONG
        return _undo_page(request, token=token, errors={"new_password": problem}, status_code=400)
    try:
        await _undo(request, token, new_password)
    except PolicyError as exc:
        errors = {"new_password": str(exc)}
        return _undo_page(request, token=token, errors=errors, status_code=400)
    except TooManyError:
        return _undo_page(request, state="failed", message=signin.TOO_MANY, status_code=429)
    except FailedError:
        return _undo_page(request, state="failed", message=UNDO_FAILED, status_code=400)
    except AddressTakenError:
        return _undo_page(request, state="failed", message=ADDRESS_TAKEN, status_code=409)
    return _undo_page(request, state="done")


# JSON API


@openapi.operation(
    answers={202: openapi.Json(ChangeRequested, "Check the new address's email")},
    security=openapi.session(),
    body=NewEmail,
    problems=(401, 403, 409, 429),
    tags=("account",),
)
async def api_change(request: Request) -> Response:
    """Change the email address

    Needs a step-up (POST /api/v1/reauth with an authenticator or recovery code in the
    last few minutes). A code and a link go to the new address; the change happens only
    when `POST /api/v1/account/email/change/verify` takes the code in this session, or
    the link is followed. An address another account has gets the same answer, and its
    owner a notice. Once changed, the old address gets a link to undo the change for 7
    days, and no password reset goes to the new address during those 7 days.

    - 400: The address is missing, malformed, or already the account's
    - 401: Not signed in
    - 403: Step-up needed
    - 409: The account has no email address (add one: POST /api/v1/account/email)
    - 429: Too many requests for this account or from this client address
    """
    session = await authn.require(request)
    body = await read_json(request, NewEmail)
    login, errors = _parse_login(body.login)
    if errors:
        problems = [{"field": f, "message": m} for f, m in errors.items()]
        raise Problem(400, "The request body is not valid.", errors=problems)
    try:
        requested = await _request(request, session, login)
    except TooManyError:
        raise Problem(429, signin.TOO_MANY) from None
    if requested.outcome is Result.STEP_UP:
        raise authn.step_up_needed(request, requested.step)
    if requested.outcome is Result.GONE:
        raise Problem(401, "Sign in first.", headers={"WWW-Authenticate": "Bearer"})
    if requested.outcome is Result.NO_ADDRESS:
        raise Problem(409, NO_ADDRESS)
    if requested.outcome is Result.SAME:
        raise Problem(400, SAME_ADDRESS, errors=[{"field": "login", "message": SAME_ADDRESS}])
    return JSONResponse(ChangeRequested().model_dump(), status_code=202)


@openapi.operation(
    answers={200: openapi.Json(EmailChanged, "The address is changed")},
    security=openapi.session(),
    body=ChangeCode,
    problems=(401, 429),
    tags=("account",),
)
async def api_change_verify(request: Request) -> Response:
    """Confirm a change of email address with the code sent to the new address

    Only in the session that asked for the change. A wrong, used, expired or voided code
    gets the same 400; 5 wrong codes void it.

    - 400: The code is not right or no longer usable
    - 401: Not signed in
    - 429: Too many codes tried for this account or from this client address
    """
    session = await authn.require(request)
    body = await read_json(request, ChangeCode)
    try:
        await _confirm_code(request, session, body.code)
    except TooManyError:
        raise Problem(429, signin.TOO_MANY) from None
    except FailedError:
        raise Problem(400, CODE_FAILED) from None
    return JSONResponse(EmailChanged().model_dump())


@openapi.operation(
    answers={200: openapi.Json(EmailChanged, "The address is changed")},
    body=ChangeLink,
    problems=(429,),
    tags=("account",),
)
async def api_change_confirm(request: Request) -> Response:
    """Confirm a change of email address with the token of the link sent to it

    Signs nobody in. A used, expired, voided, truncated or unknown token gets the same 400.

    - 400: The token does not work
    - 429: Too many attempts from this client address
    """
    body = await read_json(request, ChangeLink)
    try:
        await _confirm_link(request, body.token)
    except TooManyError:
        raise Problem(429, signin.TOO_MANY) from None
    except FailedError:
        raise Problem(400, LINK_FAILED) from None
    return JSONResponse(EmailChanged().model_dump())


@openapi.operation(
    answers={204: openapi.Empty("The old address is back; every session and app grant ended")},
    body=UndoChange,
    problems=(409, 429),
    tags=("account",),
)
async def api_undo(request: Request) -> Response:
    """Undo a change of email address with the link sent to the old address

    Works for 7 days after the change, without signing in, and only together with a new
    password (the same rules as at sign-up). The old address becomes the sign-in address
    again, the new password is set, every session and every app's grant of the account
    ends, and both addresses get a notice. An unknown, truncated, expired or used token
    gets one 400.

    - 400: The token does not work, or the new password is refused
    - 409: The old address now belongs to another account: it cannot be restored
    - 429: Too many attempts from this client address or for this account
    """
    body = await read_json(request, UndoChange)
    try:
        await _undo(request, body.token, body.new_password)
    except PolicyError as exc:
        message = str(exc)
        raise Problem(
            400,
            "The request body is not valid.",
            errors=[{"field": "new_password", "message": message}],
        ) from None
    except TooManyError:
        raise Problem(429, signin.TOO_MANY) from None
    except FailedError:
        raise Problem(400, UNDO_FAILED) from None
    except AddressTakenError:
        raise Problem(409, ADDRESS_TAKEN) from None
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


def routes() -> list[BaseRoute]:
    return [
        Route(PAGE, change_page, methods=["GET"], name="account_email_change"),
        Route(PAGE, change_submit, methods=["POST"]),
        Route(f"{PAGE}/verify", verify_submit, methods=["POST"]),
        Route(
            email_change.CONFIRM_PATH, confirm_page, methods=["GET"], name="email_change_confirm"
        ),
        Route(email_change.CONFIRM_PATH, confirm_submit, methods=["POST"]),
        Route(email_change.UNDO_PATH, undo_page, methods=["GET"], name="email_undo"),
        Route(email_change.UNDO_PATH, undo_submit, methods=["POST"]),
        Route("/api/v1/account/email/change", api_change, methods=["POST"]),
        Route("/api/v1/account/email/change/verify", api_change_verify, methods=["POST"]),
        Route("/api/v1/email/change/confirm", api_change_confirm, methods=["POST"]),
        Route("/api/v1/email/undo", api_undo, methods=["POST"]),
    ]
