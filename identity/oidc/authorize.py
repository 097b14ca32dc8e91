"""The authorization endpoint (RFC 6749 §3.1, OpenID Connect Core §3.1.2): a page.

Order matters. The request is validated first: an unknown or disabled client, or a
redirect URI not registered exactly, gets an error page here and never a redirect.
Then the person must be signed in with their second factor (first-party clients also
need a verified patient). Then consent: remembered grants covering the request are
reused, otherwise the consent page asks; a remembered grant is read again, locked, as
the code is stored, so a revocation racing the request never leaves a code it missed. The
consent form carries the authorization parameters once, as hidden fields (a repeated
parameter is an error to Authlib).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oidc.core.errors import ConsentRequiredError, LoginRequiredError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.http.forms import read_form
from carebridge.http.templates import templates_for
from carebridge.i18n import N_
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity import authn, patients, sessions
from identity.authn import Step
from identity.oidc import consents
from identity.oidc import scopes as scope_rules
from identity.oidc.clients import Client
from identity.oidc.paths import AUTHORIZE_PATH
from identity.oidc.server import AuthorizationServer, server_for
from identity.oidc.starlette_oauth2 import Answer, ParameterError, StarletteOAuth2Request
from identity.oidc.tokens import Authorizing

templates = templates_for(Path(__file__).resolve().parents[1] / "templates")

_ERROR_MESSAGES = {
    "invalid_client": N_(
        "This app is not registered with carebridge, or it has been switched off."
    ),
    "invalid_request": N_("The app sent a sign-in request carebridge cannot accept."),
    "unsupported_response_type": N_(
        "The app asked to sign you in in a way carebridge does not offer."
    ),
}


def error_page(request: Request, error: str, status: int = 400) -> Response:
    message = _ERROR_MESSAGES.get(error, _ERROR_MESSAGES["invalid_request"])
    return templates.TemplateResponse(
        request,
        "identity/oidc/error.html",
        {
            "message": message,
            "error": error,
            "request_id": getattr(request.state, "request_id", None),
        },
        status_code=status,
    )


@dataclass
class Checked:
    grant: Any = None
    error: OAuth2Error | None = None
    client: Client | None = None
    remembered: frozenset[str] = frozenset()
    verified: bool = False


def _redirect(server: AuthorizationServer, answer: Answer) -> Response:
    location = answer.location
    assert location is not None  # noqa: S101  (callers pass redirects only)
    return RedirectResponse(location, status_code=303)


def _error_response(request: Request, server: AuthorizationServer, error: OAuth2Error) -> Response:
    if error.redirect_uri:
        # Client and redirect URI are valid: the error goes back to the app, with iss.
        answer = Answer(*error())
        server.issuer_parameter.add_issuer_parameter(server, answer)
        return _redirect(server, answer)
    return error_page(request, error.error or "invalid_request")


def _target(pairs: list[tuple[str, str]]) -> str:
    return f"{AUTHORIZE_PATH}?{urlencode(pairs)}"


async def authorize(request: Request) -> Response:
    server = server_for(request)
    try:
        oauth = server.oauth2_request(request, AUTHORIZE_PATH)
    except ParameterError:
        return error_page(request, "invalid_request")
    return await _handle(request, server, oauth, decision=None)


async def authorize_submit(request: Request) -> Response:
    server = server_for(request)
    form = await read_form(request)  # CSRF: another site cannot approve for you
    pairs = [
        (key, value)
        for key, value in form.multi_items()
        if key not in ("csrf_token", "decision") and isinstance(value, str)
    ]
    decision = form.get("decision")
    try:
        oauth = server.oauth2_request(request, AUTHORIZE_PATH, pairs, with_query=False)
    except ParameterError:
        return error_page(request, "invalid_request")
    return await _handle(
        request, server, oauth, decision=decision if isinstance(decision, str) else ""
    )


async def _handle(  # noqa: PLR0911  (one decision per step, read top to bottom)
    request: Request,
    server: AuthorizationServer,
    oauth: StarletteOAuth2Request,
    *,
    decision: str | None,
) -> Response:
    runtime: Runtime = request.app.state.runtime
    session = await sessions.current(request)

    def step_of() -> Step:
        with runtime.sessions() as session_db:
            return authn.next_step(session_db, runtime, session)

    step = await run_in_threadpool(step_of) if session is not None else Step.SIGN_IN
    user = None
    if step is Step.DONE and session is not None:
        user = Authorizing(session.account_id, session.authenticated_at)
    pairs = [(k, v) for k, values in oauth.payload.datalist.items() for v in values]

    def check() -> Checked:
        with server.transaction() as (bound, db):
            try:
                grant = bound.get_consent_grant(oauth, end_user=user)
            except OAuth2Error as error:
                return Checked(error=error)
            except ValueError:
                # Authlib quotes a refused response_type or redirect_uri in the error's
                # description, and refuses to build it when that holds a character
                # RFC 6749 does not allow there (any non-ASCII one): an error page.
                return Checked(error=InvalidRequestError())
            client: Client = grant.request.client
            checked = Checked(grant=grant, client=client)
            if user is not None:
                checked.remembered = consents.remembered(db, user.account_id, client.client_id)
                checked.verified = patients.patient_id_of(db, user.account_id) is not None
            return checked

    checked = await run_in_threadpool(check)
    if checked.error is not None:
        return _error_response(request, server, checked.error)
    if user is None:
        # Sign in (and the second factor) first, then back here with the same request.
        location = f"{step.value}?{urlencode({'next': _target(pairs)})}"
        return RedirectResponse(location, status_code=303)
    client = checked.client
    assert client is not None  # noqa: S101
    grant = checked.grant
    if client.first_party and not checked.verified:
        return RedirectResponse(f"/verify?{urlencode({'next': _target(pairs)})}", status_code=303)
    requested = frozenset(str(grant.request.scope or "").split())
    prompts = str(oauth.payload.data.get("prompt") or "").split()
    if decision is None and _needs_login(oauth, prompts, user):
        return _login_again(request, server, grant, pairs, prompts)
    covered = requested <= checked.remembered and "consent" not in prompts
    request_id = getattr(request.state, "request_id", None)

    # The code rests on the remembered grant: no decision came with this request, and the
    # client is not first-party (which needs none).
    on_memory = decision is None and not client.first_party
    if on_memory and not covered:
        return _ask(request, server, grant, requested, pairs, verified=checked.verified)

    approve = decision is None or decision == "allow"

    def respond() -> Answer | None:
        with server.transaction() as (bound, db):
            actor = f"account:{user.account_id}"
            if on_memory and not requested <= consents.remembered(
                db, user.account_id, client.client_id, lock=True
            ):
                # Revoked since check() read it: no code. Read again, locked, in the
                # transaction that stores the code, so a revocation committed later
                # finds the code and ends its grant (consents.revoke).
                return None
            if (approve and decision is not None) or (approve and client.first_party):
                consents.remember(
                    db,
                    account_id=user.account_id,
                    client_id=client.client_id,
                    scope=" ".join(sorted(requested)),
                )
            if decision is not None:
                audit.append(
                    db,
                    actor=actor,
                    action="identity.oidc.consent.grant"
                    if approve
                    else "identity.oidc.consent.deny",
                    outcome=Outcome.ALLOWED if approve else Outcome.DENIED,
                    target=f"client:{client.client_id}",
                    request_id=request_id,
                )
            # The grant was made in check()'s transaction: it runs in this one.
            grant.server = bound
            answer: Answer = bound.create_authorization_response(
                request=oauth, grant_user=user if approve else None, grant=grant
            )
            return answer

    answer = await run_in_threadpool(respond)
    if answer is None:
        return _ask(request, server, grant, requested, pairs, verified=checked.verified)
    if answer.location is None:
        return error_page(request, "invalid_request")
    return _redirect(server, answer)


def _ask(
    request: Request,
    server: AuthorizationServer,
    grant: Any,
    requested: frozenset[str],
    pairs: list[tuple[str, str]],
    *,
    verified: bool,
) -> Response:
    """No remembered grant covers the request: the consent page, or, under prompt=none,
    consent_required to the app."""
    payload = grant.request.payload
    if "none" in str(payload.data.get("prompt") or "").split():
        error = ConsentRequiredError(redirect_uri=grant.redirect_uri)
        error.state = payload.state
        return _error_response(request, server, error)
    return _consent_page(request, grant.request.client, requested, pairs, verified)


def _login_again(
    request: Request,
    server: AuthorizationServer,
    grant: Any,
    pairs: list[tuple[str, str]],
    prompts: list[str],
) -> Response:
    if "none" in prompts:
        login = LoginRequiredError(redirect_uri=grant.redirect_uri)
        login.state = grant.request.payload.state
        return _error_response(request, server, login)
    # Back here afterwards without the demand just met (or it would ask forever).
    again = [
        (k, " ".join(p for p in v.split() if p != "login") if k == "prompt" else v)
        for k, v in pairs
        if k != "max_age"
    ]
    return RedirectResponse(f"/reauth?{urlencode({'next': _target(again)})}", status_code=303)


def _needs_login(oauth: StarletteOAuth2Request, prompts: list[str], user: Authorizing) -> bool:
    """prompt=login, or a max_age older than the person's last proof of identity."""
    if "login" in prompts:
        return True
    max_age = str(oauth.payload.data.get("max_age") or "")
    if not max_age.isdigit():
        return False
    return (utcnow() - user.auth_time).total_seconds() > int(max_age)


def _consent_page(
    request: Request,
    client: Client,
    requested: frozenset[str],
    pairs: list[tuple[str, str]],
    verified: bool,
) -> Response:
    described = sorted({scope_rules.describe(s) for s in requested if s != scope_rules.OPENID})
    return templates.TemplateResponse(
        request,
        "identity/oidc/consent.html",
        {
            "client": client,
            "scopes": described,
            "fields": pairs,
            "verified": verified,
        },
        headers={"Cache-Control": "no-store"},
    )


def routes() -> list[BaseRoute]:
    return [
        Route(AUTHORIZE_PATH, authorize, methods=["GET"], name="oidc_authorize"),
        Route(AUTHORIZE_PATH, authorize_submit, methods=["POST"]),
    ]
