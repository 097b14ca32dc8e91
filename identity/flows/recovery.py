"""Lost second factor: the pages and JSON API of identity/recovery.py.

Reached from the second step of a sign-in (``/mfa/challenge``: "Lost your authenticator
and recovery codes?"). ``/recovery`` shows where the account's request stands and the
next thing to do; ``/recovery/link`` is the e-mailed link (this browser only);
``/recovery/cancel`` the "this wasn't me" link (a page with a button: a link scanner's
GET changes nothing).
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

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
from identity import authn, recovery, sessions
from identity.authn import Step
from identity.flows.signin import TOO_MANY, form_errors, form_text, request_context
from identity.flows.verify import VerifyDetails
from identity.interfaces import EmailSender, Outward, SecurityNoticeTexter
from identity.models import AuthSession

templates = templates_for(Path(__file__).resolve().parents[1] / "templates")

PAGE = "/recovery"
REFUSALS = {
    recovery.Refusal.NO_ADDRESS: N_(
        "Your account has no confirmed email address, so it can't be recovered online. "
        "Contact support."
    ),
    recovery.Refusal.NO_ROSTER: N_(
        "Your account isn't linked to a patient record we can check you against, so it "
        "can't be recovered online. Contact support."
    ),
    recovery.Refusal.PASSWORD_SIGN_IN: N_(
        "To replace your second factor, sign in with your email address and password, not "
        "with another account. If you have no password or don't remember it, use “Forgot "
        "your password?” first: your account can be recovered this way 7 days after that. "
        "Or contact support."
    ),
    recovery.Refusal.RECENT_CHANGE: N_(
        "Your password was reset or your email address changed in the last 7 days, so "
        "your account can't be recovered this way yet. Wait until 7 days have passed, or "
        "contact support."
    ),
}
CHECK_EMAIL = N_(
    "We sent a link to your confirmed email address. Open it in this browser within 30 "
    "minutes to go on."
)
OTHER_BROWSER = N_(
    "This link works only in the browser where you asked for it. Open it there; nothing "
    "has changed."
)
LINK_INVALID = N_(
    "This link does not work. It may have expired, been used already, or been copied incompletely."
)
WRONG_DETAILS = N_(
    "We couldn't confirm your identity with those details. Check them and try again."
)
LOCKED = N_("We can't confirm your identity online right now. Contact support.")
WRONG_CODE = N_("That code didn't work. Check the email from support and try again.")
NOT_READY = N_("There is nothing to finish yet.")
CANCELLED = N_(
    "The request to replace this account's second factor was stopped. Change the "
    "password if someone else knows it."
)


# Bodies


@openapi.component
class RecoveryLink(BaseModel):
    """The token of the e-mailed link, or of the "this wasn't me" link."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(json_schema_extra={"maxLength": recovery.MAX_TOKEN_LENGTH})


@openapi.component
class RecoveryIdentity(BaseModel):
    """Date of birth and SSN last 4, as the account's roster record has them."""

    model_config = ConfigDict(extra="forbid")

    dob: date = Field(description="Date of birth, YYYY-MM-DD", json_schema_extra={"format": "date"})
    ssn4: str = Field(
        description="The last four digits of the Social Security number",
        json_schema_extra={"pattern": r"^\d{4}$"},
    )


@openapi.component
class SupportCode(BaseModel):
    """The one-time code support had e-mailed to the account's address."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=64)


@openapi.component
class RecoveryWaiting(BaseModel):
    """Identity proved: the new authenticator can be set up after ``wait_until``."""

    wait_until: datetime


@openapi.component
class RecoveryRequested(BaseModel):
    """The link was sent to the account's confirmed address."""

    detail: str


# Helpers


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _sender(request: Request) -> EmailSender:
    outward: Outward = request.app.state.outward
    return outward.email


def _texts(request: Request) -> SecurityNoticeTexter:
    outward: Outward = request.app.state.outward
    return outward.security_texts


def _ctx(request: Request) -> dict[str, Any]:
    context = request_context(request)
    return {"client_host": context["client_host"], "request_id": context["request_id"]}


async def _level_one(request: Request) -> AuthSession | None:
    """The level-1 session at its second step (None: already at level 2)."""
    session = await authn.require(request, allow=frozenset({Step.CHALLENGE, Step.ENROLL}))
    return None if session.level >= sessions.SECOND_FACTOR else session


async def _api_session(request: Request) -> AuthSession:
    session = await _level_one(request)
    if session is None:
        raise Problem(409, "This session has already passed its second step.")
    return session


def _render(request: Request, context: dict[str, Any], *, status_code: int = 200) -> Response:
    return templates.TemplateResponse(
        request,
        "identity/recovery.html",
        {"errors": {}, "message": "", "stage": "none", **context},
        status_code=status_code,
        # Same-origin only: the cancel page's URL holds its token, and a form POST under
        # no-referrer would send "Origin: null", which the CSRF check refuses.
        headers={"Cache-Control": "no-store", "Referrer-Policy": "same-origin"},
    )


def _stage(state: recovery.Status | None) -> str:
    if state is None:
        return "none"
    if state.ready:
        return "ready"
    if state.state == recovery.WAITING:
        return "waiting"
    if state.kind == "staff":
        return "code"
    return "identity" if state.link_followed else "email"


async def _status_page(request: Request, session: AuthSession, **context: Any) -> Response:
    status_code = context.pop("status_code", 200)
    state = await run_in_threadpool(recovery.status, _runtime(request), session.account_id)
    wait_until = ""
    if state is not None and state.wait_until is not None:
        wait_until = state.wait_until.strftime("%Y-%m-%d %H:%M UTC")
    stage = context.pop("stage", None) or _stage(state)
    return _render(
        request, {"stage": stage, "wait_until": wait_until, **context}, status_code=status_code
    )


# Pages


def _refused(request: Request, refusal: recovery.Refusal) -> Response:
    return _render(request, {"stage": "refused", "message": REFUSALS[refusal]}, status_code=403)


async def recovery_page(request: Request) -> Response:
    session = await _level_one(request)
    if session is None:
        return RedirectResponse("/account", status_code=303)
    if not sessions.proved_password(session):  # said before anything is started
        return _refused(request, recovery.Refusal.PASSWORD_SIGN_IN)
    if request.query_params.get("code") == "1":
        return await _status_page(request, session, stage="code")
    return await _status_page(request, session)


async def start_submit(request: Request) -> Response:
    session = await _level_one(request)
    if session is None:
        return RedirectResponse("/account", status_code=303)
    await read_form(request)
    try:
        await run_in_threadpool(
            lambda: recovery.start(_runtime(request), _sender(request), session, **_ctx(request))
        )
    except recovery.LockedError:
        return await _status_page(request, session, errors={"form": TOO_MANY}, status_code=429)
    except recovery.RefusedError as exc:
        return await _status_page(
            request, session, stage="refused", message=REFUSALS[exc.refusal], status_code=403
        )
    return RedirectResponse(PAGE, status_code=303)


async def link_page(request: Request) -> Response:
    token = request.query_params.get("token", "")[: recovery.MAX_TOKEN_LENGTH]
    session = await sessions.current(request)
    try:
        await run_in_threadpool(
            lambda: recovery.open_link(_runtime(request), session, token, **_ctx(request))
        )
    except recovery.LockedError:
        return _render(request, {"stage": "message", "message": TOO_MANY}, status_code=429)
    except recovery.OtherBrowserError:
        return _render(request, {"stage": "message", "message": OTHER_BROWSER}, status_code=400)
    except recovery.RecoveryError:
        return _render(request, {"stage": "message", "message": LINK_INVALID}, status_code=400)
    response = RedirectResponse(PAGE, status_code=303)
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def identity_submit(request: Request) -> Response:
    session = await _level_one(request)
    if session is None:
        return RedirectResponse("/account", status_code=303)
    form = await read_form(request)
    try:
        details = VerifyDetails.model_validate(
            {"dob": form_text(form, "dob"), "ssn4": form_text(form, "ssn4")}
        )
    except ValidationError as exc:
        return await _status_page(request, session, errors=form_errors(exc), status_code=400)
    try:
        await run_in_threadpool(
            lambda: recovery.prove_identity(
                _runtime(request),
                _sender(request),
                session,
                details.dob,
                details.ssn4,
                texts=_texts(request),
                **_ctx(request),
            )
        )
    except recovery.LockedError:
        return await _status_page(request, session, errors={"form": LOCKED}, status_code=403)
    except recovery.RecoveryError:
        return await _status_page(request, session, errors={"form": WRONG_DETAILS}, status_code=422)
    return RedirectResponse(PAGE, status_code=303)


async def code_submit(request: Request) -> Response:
    session = await _level_one(request)
    if session is None:
        return RedirectResponse("/account", status_code=303)
    form = await read_form(request)
    code = form_text(form, "code")[:64]
    try:
        await run_in_threadpool(
            lambda: recovery.enter_code(
                _runtime(request),
                _sender(request),
                session,
                code,
                texts=_texts(request),
                **_ctx(request),
            )
        )
    except recovery.LockedError:
        return await _status_page(
            request, session, stage="code", errors={"form": TOO_MANY}, status_code=429
        )
    except recovery.RefusedError as exc:
        return _refused(request, exc.refusal)
    except recovery.RecoveryError:
        return await _status_page(
            request, session, stage="code", errors={"code": WRONG_CODE}, status_code=400
        )
    return RedirectResponse(PAGE, status_code=303)


async def complete_submit(request: Request) -> Response:
    session = await _level_one(request)
    if session is None:
        return RedirectResponse("/account", status_code=303)
    await read_form(request)
    try:
        await run_in_threadpool(
            lambda: recovery.complete(
                _runtime(request),
                _sender(request),
                session,
                texts=_texts(request),
                request_id=request_context(request)["request_id"],
            )
        )
    except recovery.RefusedError as exc:
        return _refused(request, exc.refusal)
    except recovery.RecoveryError:
        return await _status_page(request, session, errors={"form": NOT_READY}, status_code=409)
    return RedirectResponse("/mfa/enroll", status_code=303)


async def cancel_page(request: Request) -> Response:
    token = request.query_params.get("token", "")[: recovery.MAX_TOKEN_LENGTH]
    return _render(request, {"stage": "cancel", "token": token})


async def cancel_submit(request: Request) -> Response:
    form = await read_form(request)
    token = form_text(form, "token")[: recovery.MAX_TOKEN_LENGTH]
    try:
        await run_in_threadpool(
            lambda: recovery.cancel_by_link(
                _runtime(request), _sender(request), token, **_ctx(request)
            )
        )
    except recovery.LockedError:
        return _render(request, {"stage": "message", "message": TOO_MANY}, status_code=429)
    except recovery.RecoveryError:
        return _render(request, {"stage": "message", "message": LINK_INVALID}, status_code=400)
    return _render(request, {"stage": "message", "message": CANCELLED})


# JSON API


@openapi.operation(
    answers={202: openapi.Json(RecoveryRequested, "The link was e-mailed")},
    security=openapi.session(),
    problems=(403, 409, 429),
    tags=("accounts",),
)
async def api_start(request: Request) -> Response:
    """Start recovering a lost second factor without a recovery code

    For a level-1 session that signed in with the password (not a social sign-in).
    E-mails a link, valid 30 minutes, to the account's confirmed address; it works only
    with this session (POST /api/v1/recovery/link). Refused (403) for a session that did
    not sign in with the password, without a confirmed address, without a link to a
    patient record, or within 7 days of a password reset or an e-mail change.

    - 401: Not signed in
    - 403: This account can't be recovered this way now (contact support, or wait)
    - 409: The session already passed its second step
    - 429: Too many attempts; try again later
    """
    session = await _api_session(request)
    try:
        await run_in_threadpool(
            lambda: recovery.start(_runtime(request), _sender(request), session, **_ctx(request))
        )
    except recovery.LockedError:
        raise Problem(429, TOO_MANY) from None
    except recovery.RefusedError as exc:
        raise Problem(403, REFUSALS[exc.refusal]) from None
    body = RecoveryRequested(detail=CHECK_EMAIL)
    return JSONResponse(body.model_dump(), status_code=202, headers={"Cache-Control": "no-store"})


@openapi.operation(
    answers={204: openapi.Empty("The link worked; now prove identity")},
    security=openapi.session(),
    body=RecoveryLink,
    problems=(409, 429),
    tags=("accounts",),
)
async def api_link(request: Request) -> Response:
    """Follow the e-mailed recovery link

    With the same session that asked for it; with any other, it does nothing (400).

    - 400: The link does not work, or belongs to another session
    - 401: Not signed in
    - 409: The session already passed its second step
    - 429: Too many attempts; try again later
    """
    session = await _api_session(request)
    body = await read_json(request, RecoveryLink)
    try:
        await run_in_threadpool(
            lambda: recovery.open_link(_runtime(request), session, body.token, **_ctx(request))
        )
    except recovery.LockedError:
        raise Problem(429, TOO_MANY) from None
    except recovery.OtherBrowserError:
        raise Problem(400, OTHER_BROWSER) from None
    except recovery.RecoveryError:
        raise Problem(400, LINK_INVALID) from None
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


def _waiting(wait_until: datetime) -> Response:
    body = RecoveryWaiting(wait_until=wait_until)
    return JSONResponse(body.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


@openapi.operation(
    answers={200: openapi.Json(RecoveryWaiting, "Identity proved; the wait started")},
    security=openapi.session(),
    body=RecoveryIdentity,
    problems=(403, 409, 422),
    tags=("accounts",),
)
async def api_identity(request: Request) -> Response:
    """Prove identity for a recovery: date of birth and SSN last 4

    After the e-mailed link was followed with this session. Checked against the
    account's own patient record, counted like identity verification (5 failures lock
    it until support reviews). On success the waiting period starts and a notice with a
    "this wasn't me" link goes to the confirmed address.

    - 400: Malformed details
    - 401: Not signed in
    - 403: Locked: contact support
    - 409: The session already passed its second step
    - 422: The details don't match, or the link was not followed first
    """
    session = await _api_session(request)
    body = await read_json(request, RecoveryIdentity)
    try:
        details = VerifyDetails.model_validate({"dob": body.dob, "ssn4": body.ssn4})
    except ValidationError as exc:
        errors = [{"field": str(e["loc"][0]), "message": e["msg"]} for e in exc.errors()]
        raise Problem(400, "The request body is not valid.", errors=errors) from None
    try:
        wait_until = await run_in_threadpool(
            lambda: recovery.prove_identity(
                _runtime(request),
                _sender(request),
                session,
                details.dob,
                details.ssn4,
                texts=_texts(request),
                **_ctx(request),
            )
        )
    except recovery.LockedError:
        raise Problem(403, LOCKED) from None
    except recovery.RecoveryError:
        raise Problem(422, WRONG_DETAILS) from None
    return _waiting(wait_until)


@openapi.operation(
    answers={200: openapi.Json(RecoveryWaiting, "Code accepted; the wait started")},
    security=openapi.session(),
    body=SupportCode,
    problems=(403, 409, 429),
    tags=("accounts",),
)
async def api_code(request: Request) -> Response:
    """Enter the one-time code from support

    For a level-1 session, signed in with the password, of the account support started a
    recovery for. On success the waiting period starts and a notice goes to the confirmed
    address.

    - 400: Wrong, expired or used code
    - 401: Not signed in
    - 403: The session did not sign in with the password
    - 409: The session already passed its second step
    - 429: Too many attempts; try again later
    """
    session = await _api_session(request)
    body = await read_json(request, SupportCode)
    try:
        wait_until = await run_in_threadpool(
            lambda: recovery.enter_code(
                _runtime(request),
                _sender(request),
                session,
                body.code,
                texts=_texts(request),
                **_ctx(request),
            )
        )
    except recovery.LockedError:
        raise Problem(429, TOO_MANY) from None
    except recovery.RefusedError as exc:
        raise Problem(403, REFUSALS[exc.refusal]) from None
    except recovery.RecoveryError:
        raise Problem(400, WRONG_CODE) from None
    return _waiting(wait_until)


@openapi.operation(
    answers={204: openapi.Empty("Old factors removed; enrol a new authenticator")},
    security=openapi.session(),
    problems=(403, 409),
    tags=("accounts",),
)
async def api_complete(request: Request) -> Response:
    """Finish a recovery after its waiting period

    Removes the old authenticator and recovery codes, ends every other session and app
    grant; this session (signed in with the password) goes on to POST
    /api/v1/mfa/totp/enroll.

    - 401: Not signed in
    - 403: The session did not sign in with the password
    - 409: No recovery has waited its time, or the session already passed its second step
    """
    session = await _api_session(request)
    try:
        await run_in_threadpool(
            lambda: recovery.complete(
                _runtime(request),
                _sender(request),
                session,
                texts=_texts(request),
                request_id=request_context(request)["request_id"],
            )
        )
    except recovery.RefusedError as exc:
        raise Problem(403, REFUSALS[exc.refusal]) from None
    except recovery.RecoveryError:
        raise Problem(409, NOT_READY) from None
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


@openapi.operation(
    answers={204: openapi.Empty("The recovery was stopped")},
    body=RecoveryLink,
    problems=(429,),
    tags=("accounts",),
)
async def api_cancel(request: Request) -> Response:
    """Stop a recovery: "this wasn't me"

    The token of the link in the notice; it works for the whole waiting period.

    - 400: The link does not work (or the recovery already ended)
    - 429: Too many attempts; try again later
    """
    body = await read_json(request, RecoveryLink)
    try:
        await run_in_threadpool(
            lambda: recovery.cancel_by_link(
                _runtime(request), _sender(request), body.token, **_ctx(request)
            )
        )
    except recovery.LockedError:
        raise Problem(429, TOO_MANY) from None
    except recovery.RecoveryError:
        raise Problem(400, LINK_INVALID) from None
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


def routes() -> list[BaseRoute]:
    return [
        Route(PAGE, recovery_page, methods=["GET"], name="recovery"),
        Route(f"{PAGE}/start", start_submit, methods=["POST"]),
        Route(recovery.LINK_PATH, link_page, methods=["GET"]),
        Route(f"{PAGE}/identity", identity_submit, methods=["POST"]),
        Route(f"{PAGE}/code", code_submit, methods=["POST"]),
        Route(f"{PAGE}/complete", complete_submit, methods=["POST"]),
        Route(recovery.CANCEL_PATH, cancel_page, methods=["GET"]),
        Route(recovery.CANCEL_PATH, cancel_submit, methods=["POST"]),
        Route("/api/v1/recovery/start", api_start, methods=["POST"]),
        Route("/api/v1/recovery/link", api_link, methods=["POST"]),
        Route("/api/v1/recovery/identity", api_identity, methods=["POST"]),
        Route("/api/v1/recovery/code", api_code, methods=["POST"]),
        Route("/api/v1/recovery/complete", api_complete, methods=["POST"]),
        Route("/api/v1/recovery/cancel", api_cancel, methods=["POST"]),
    ]
