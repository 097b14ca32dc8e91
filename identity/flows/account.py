"""The signed-in pages: the account home, security settings and active sessions.

Every page here needs a finished sign-in (with MFA required, a level-2 session).
Regenerating recovery codes or turning the authenticator off also needs a recent
re-authentication (``/reauth``). Sessions are revoked by their public handle, and only the
account's own: someone else's handle is answered exactly like one that does not exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.http import openapi
from carebridge.http.forms import read_form
from carebridge.http.problems import Problem
from carebridge.i18n import _
from carebridge.runtime import Runtime
from identity import authn, notices, sessions, throttle
from identity.credentials import recovery, totp, upstream
from identity.flows import mfa, signin
from identity.flows.mfa import Status
from identity.interfaces import EmailSender
from identity.models import AuthSession, PatientLink
from identity.notices import Notice
from identity.oidc import backchannel, consents, withdrawals

_HANDLE = re.compile(r"ses_[A-Za-z0-9_-]{22}")


@openapi.component
class SessionInfo(BaseModel):
    handle: str = Field(description="Public handle, for revoking; not the token")
    user_agent: str
    created_at: datetime
    last_seen_at: datetime
    current: bool = Field(description="True for the session making this request")
    signed_in_with: str | None = Field(
        default=None,
        description='How it signed in: "password", or "upstream:" and the provider\'s name; '
        "null for a session from before this was recorded",
    )


@openapi.component
class SessionList(BaseModel):
    sessions: list[SessionInfo]


@dataclass(frozen=True)
class Security:
    totp_confirmed_at: datetime | None
    totp_label: str
    recovery_codes_remaining: int
    mfa_required: bool


# Services


def security_status(runtime: Runtime, account_id: str) -> Security:
    with runtime.sessions() as db:
        credential = totp.confirmed(db, account_id)
        return Security(
            totp_confirmed_at=credential.confirmed_at if credential else None,
            totp_label=totp.label(runtime, account_id),
            recovery_codes_remaining=recovery.remaining(db, account_id),
            mfa_required=runtime.settings.mfa_required,
        )


def regenerate_recovery_codes(
    runtime: Runtime,
    session: AuthSession,
    *,
    request_id: str | None,
    email: EmailSender,
    reveal: bool = True,
) -> tuple[Status, list[str]]:
    """New codes (Status.WRONG: no authenticator to back them). With ``reveal`` they wait,
    encrypted to this session, for the page that shows them once; the API returns them.
    Needs a step-up; the owner gets a notice. Each one counts against the account's
    ``throttle.RECOVERY_CODES_ACCOUNT`` (Status.LOCKED past it: nothing regenerated)."""
    if not authn.is_stepped_up(session, runtime.settings):
        return Status.REAUTH, []
    actor = f"account:{session.account_id}"
    limit = throttle.account_limit(throttle.RECOVERY_CODES_ACCOUNT, session.account_id)
    with transaction(runtime.sessions) as db:
        if throttle.store_for(runtime.settings).attempt(db, [limit], throttle.utcnow()) is None:
            audit.append(
                db,
                actor=actor,
                action="identity.mfa.recovery.regenerate",
                outcome=Outcome.DENIED,
                target=actor,
                request_id=request_id,
            )
            return Status.LOCKED, []
    with transaction(runtime.sessions) as db:
        # It ends the other sessions: the session lock first (identity.sessions), then
        # the session read under it: one ended since the request began (a reset, a sign
        # out everywhere) gets no codes.
        lock = sessions.lock_account_sessions(db, session.account_id)
        if lock is None or db.get(AuthSession, session.token_hash) is None:
            return Status.GONE, []
        if totp.confirmed(db, session.account_id) is None:
            return Status.WRONG, []
        reveal_to = session.handle if reveal else None
        codes = recovery.regenerate(db, runtime, session.account_id, reveal_to=reveal_to)
        audit.append(
            db,
            actor=actor,
            action="identity.mfa.recovery.regenerate",
            outcome=Outcome.ALLOWED,
            target=actor,
            request_id=request_id,
        )
        sessions.revoke_others(db, lock, session, request_id=request_id)
        notices.send(db, runtime, email, session.account_id, Notice.RECOVERY_CODES_REGENERATED)
    return Status.OK, codes


def remove_totp(
    runtime: Runtime, session: AuthSession, *, request_id: str | None, email: EmailSender
) -> Status:
    """Turn two-step verification off: only where the policy leaves it optional, after a
    step-up; the owner gets a notice."""
    if runtime.settings.mfa_required:
        return Status.WRONG
    if not authn.is_stepped_up(session, runtime.settings):
        return Status.REAUTH
    actor = f"account:{session.account_id}"
    with transaction(runtime.sessions) as db:
        # The session read under the session lock: one ended since the request began (a
        # reset, a sign out everywhere) removes nothing.
        lock = sessions.lock_account_sessions(db, session.account_id)
        if lock is None or db.get(AuthSession, session.token_hash) is None:
            return Status.GONE
        totp.remove(db, session.account_id)
        recovery.remove_all(db, session.account_id)
        audit.append(
            db,
            actor=actor,
            action="identity.mfa.totp.remove",
            outcome=Outcome.ALLOWED,
            target=actor,
            request_id=request_id,
        )
        notices.send(db, runtime, email, session.account_id, Notice.SECOND_FACTOR_REMOVED)
    return Status.OK


def is_verified(runtime: Runtime, account_id: str) -> bool:
    """Whether the account is linked to a patient (the patient ID itself is for systems)."""
    with runtime.sessions() as db:
        return db.get(PatientLink, account_id) is not None


def list_sessions(runtime: Runtime, account_id: str) -> list[AuthSession]:
    with runtime.sessions() as db:
        return sessions.for_account(db, account_id)


def revoke_session(
    runtime: Runtime, session: AuthSession, handle: str, *, request_id: str | None
) -> bool:
    """End one of the account's sessions by handle; False (and audited) if not theirs."""
    actor = f"account:{session.account_id}"
    well_formed = _HANDLE.fullmatch(handle) is not None
    with transaction(runtime.sessions) as db:
        revoked = well_formed and sessions.revoke(db, session.account_id, handle)
        audit.append(
            db,
            actor=actor,
            action="identity.session.revoke",
            outcome=Outcome.ALLOWED if revoked else Outcome.DENIED,
            target=f"session:{handle if well_formed else 'malformed'}",
            request_id=request_id,
        )
    return revoked


def sign_out_everywhere(runtime: Runtime, account_id: str, *, request_id: str | None) -> None:
    """End every session of the account, this one too, and every app's grant (refresh
    tokens revoked, access tokens withdrawn); audited."""
    actor = f"account:{account_id}"
    with transaction(runtime.sessions) as db:
        lock = sessions.lock_account_sessions(db, account_id)
        if lock is not None:
            sessions.revoke_everywhere(db, lock, actor=actor, request_id=request_id)
            backchannel.queue(db, account_id)
            withdrawals.end_grants(db, account_id)


# Pages


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _email(request: Request) -> EmailSender:
    sender: EmailSender = request.app.state.outward.email
    return sender


def _render(request: Request, name: str, context: dict[str, Any]) -> Response:
    return mfa.templates.TemplateResponse(request, f"identity/{name}", context)


async def home(request: Request) -> Response:
    session = await authn.require(request)
    verified = await run_in_threadpool(is_verified, _runtime(request), session.account_id)
    apps = await run_in_threadpool(consents.connected_apps, _runtime(request), session.account_id)
    return _render(request, "account.html", {"verified": verified, "apps": apps})


async def revoke_app_submit(request: Request) -> Response:
    """Connected apps: forget a grant and revoke that app's refresh tokens."""
    session = await authn.require(request)
    form = await read_form(request)
    client_id = str(form.get("client_id") or "")[:100]
    revoked = await run_in_threadpool(
        lambda: consents.revoke(
            _runtime(request), session.account_id, client_id, request_id=_request_id(request)
        )
    )
    if not revoked:
        raise Problem(404)
    return RedirectResponse("/account?done=app-revoked", status_code=303)


async def security_page(request: Request) -> Response:
    session = await authn.require(request)
    status = await run_in_threadpool(security_status, _runtime(request), session.account_id)
    notice = request.query_params.get("done")
    return _render(request, "account_security.html", {"security": status, "notice": notice})


async def regenerate_submit(request: Request) -> Response:
    session = await authn.require(request)
    await read_form(request)
    status, _ = await run_in_threadpool(
        lambda: regenerate_recovery_codes(
            _runtime(request), session, request_id=_request_id(request), email=_email(request)
        )
    )
    if status is Status.REAUTH:
        return mfa.reauth_redirect("/account/security")
    if status is Status.GONE:
        return mfa.signin_redirect(request)
    if status is Status.LOCKED:
        security = await run_in_threadpool(security_status, _runtime(request), session.account_id)
        context = {"security": security, "errors": {"form": signin.TOO_MANY}}
        return mfa.templates.TemplateResponse(
            request, "identity/account_security.html", context, status_code=429
        )
    if status is not Status.OK:
        return RedirectResponse("/account/security", status_code=303)
    location = f"/mfa/recovery-codes?{urlencode({'next': '/account/security'})}"
    return RedirectResponse(location, status_code=303)


async def remove_totp_submit(request: Request) -> Response:
    session = await authn.require(request)
    await read_form(request)
    status = await run_in_threadpool(
        lambda: remove_totp(
            _runtime(request), session, request_id=_request_id(request), email=_email(request)
        )
    )
    if status is Status.REAUTH:
        return mfa.reauth_redirect("/account/security")
    if status is Status.GONE:
        return mfa.signin_redirect(request)
    if status is not Status.OK:
        raise Problem(403, "Two-step verification is required for every account here.")
    return RedirectResponse("/account/security?done=removed", status_code=303)


def _signed_in_with(runtime: Runtime, session: AuthSession) -> str:
    """How the session signed in, for people: "Password", a provider's name, or ""."""
    if sessions.proved_password(session):
        return _("Password")
    provider = sessions.upstream_provider(session)
    if provider is None:
        return ""
    found = upstream.get(runtime, provider)
    return found.display_name if found is not None else provider


async def sessions_page(request: Request) -> Response:
    session = await authn.require(request)
    runtime = _runtime(request)
    listed = await run_in_threadpool(list_sessions, runtime, session.account_id)
    context = {
        "sessions": [(each, _signed_in_with(runtime, each)) for each in listed],
        "current": session.handle,
    }
    return _render(request, "account_sessions.html", context)


async def revoke_submit(request: Request) -> Response:
    session = await authn.require(request)
    form = await read_form(request)
    handle = str(form.get("handle") or "")[:64]
    revoked = await run_in_threadpool(
        revoke_session, _runtime(request), session, handle, request_id=_request_id(request)
    )
    if not revoked:
        raise Problem(404)
    response = RedirectResponse("/account/sessions", status_code=303)
    if handle == session.handle:
        sessions.clear_cookie(response, _runtime(request))
    return response


async def revoke_all_submit(request: Request) -> Response:
    session = await authn.require(request)
    await read_form(request)
    await run_in_threadpool(
        lambda: sign_out_everywhere(
            _runtime(request), session.account_id, request_id=_request_id(request)
        )
    )
    response = RedirectResponse("/signin?signed_out=1", status_code=303)
    sessions.clear_cookie(response, _runtime(request))
    return response


# JSON API


def _info(session: AuthSession, current: AuthSession) -> SessionInfo:
    return SessionInfo(
        handle=session.handle,
        user_agent=session.user_agent,
        created_at=session.created_at,
        last_seen_at=session.last_seen_at,
        current=session.handle == current.handle,
        signed_in_with=session.first_factor,
    )


@openapi.operation(
    answers={200: openapi.Json(SessionList, "Newest activity first")},
    security=openapi.session(),
)
async def api_sessions(request: Request) -> Response:
    """List the account's active sessions

    - 401: Not signed in
    """
    session = await authn.require(request)
    listed = await run_in_threadpool(list_sessions, _runtime(request), session.account_id)
    body = SessionList(sessions=[_info(each, session) for each in listed])
    return JSONResponse(body.model_dump(mode="json"))


@openapi.operation(
    answers={204: openapi.Empty("Revoked")},
    security=openapi.session(),
    problems=(404,),
)
async def api_revoke(request: Request) -> Response:
    """Revoke a session by its handle

    Only the account's own sessions; any other handle answers 404, whether it exists or
    not. Revoking the session making the request signs it out.

    - 401: Not signed in
    - 404: No such session of this account
    """
    session = await authn.require(request)
    handle = str(request.path_params["handle"])[:64]
    revoked = await run_in_threadpool(
        revoke_session, _runtime(request), session, handle, request_id=_request_id(request)
    )
    if not revoked:
        raise Problem(404, "No such session.")
    return Response(status_code=204)


@openapi.operation(
    answers={204: openapi.Empty("Signed out everywhere")},
    security=openapi.session(),
)
async def api_revoke_all(request: Request) -> Response:
    """Sign out everywhere

    Ends every session of the account, the one making this request too, and every app's
    grant (refresh tokens revoked, access tokens withdrawn).

    - 401: Not signed in
    """
    session = await authn.require(request)
    await run_in_threadpool(
        lambda: sign_out_everywhere(
            _runtime(request), session.account_id, request_id=_request_id(request)
        )
    )
    return Response(status_code=204)


@openapi.component
class RecoveryCodes(BaseModel):
    recovery_codes: list[str] = Field(description="Ten single-use codes, shown this once")


@openapi.operation(
    answers={200: openapi.Json(RecoveryCodes, "The new codes")},
    security=openapi.session(),
    problems=(403, 409, 429),
)
async def api_regenerate(request: Request) -> Response:
    """Replace the recovery codes with ten new ones

    Needs a step-up (POST /api/v1/reauth with a second factor first); the old codes stop
    working. The new ones are in this response only: they are stored hashed.

    - 401: Not signed in
    - 403: Step-up needed
    - 409: No authenticator app set up
    - 429: Too many new sets of codes for this account lately
    """
    session = await authn.require(request)
    status, codes = await run_in_threadpool(
        lambda: regenerate_recovery_codes(
            _runtime(request),
            session,
            request_id=_request_id(request),
            email=_email(request),
            reveal=False,
        )
    )
    if status is Status.REAUTH:
        raise authn.step_up_needed(request, authn.StepUp.REAUTH)
    if status is Status.LOCKED:
        raise Problem(429, signin.TOO_MANY)
    if status is Status.GONE:
        raise Problem(401, "Sign in first.", headers={"WWW-Authenticate": "Bearer"})
    if status is not Status.OK:
        raise Problem(409, "Set up an authenticator app first.")
    return JSONResponse(RecoveryCodes(recovery_codes=codes).model_dump())


def routes() -> list[BaseRoute]:
    return [
        Route("/account", home, methods=["GET"], name="account"),
        Route("/account/apps/revoke", revoke_app_submit, methods=["POST"]),
        Route("/account/security", security_page, methods=["GET"], name="account_security"),
        Route("/account/security/recovery-codes", regenerate_submit, methods=["POST"]),
        Route("/api/v1/mfa/recovery-codes", api_regenerate, methods=["POST"]),
        Route("/account/security/totp/remove", remove_totp_submit, methods=["POST"]),
        Route("/account/sessions", sessions_page, methods=["GET"], name="account_sessions"),
        Route("/account/sessions/revoke", revoke_submit, methods=["POST"]),
        Route("/account/sessions/revoke-all", revoke_all_submit, methods=["POST"]),
        Route("/api/v1/sessions", api_sessions, methods=["GET"]),
        Route("/api/v1/sessions", api_revoke_all, methods=["DELETE"]),
        Route("/api/v1/sessions/{handle}", api_revoke, methods=["DELETE"]),
    ]
