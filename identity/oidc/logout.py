"""RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0): the end_session endpoint.

``post_logout_redirect_uri`` must be registered exactly for the client named by
``id_token_hint`` (or ``client_id``); otherwise nothing redirects. Signing out is a form
post (CSRF-checked) so a link on another site cannot sign anyone out.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from joserfc import jwt
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge.http.forms import read_form
from carebridge.runtime import Runtime
from identity import sessions
from identity.flows import signout
from identity.oidc import clients
from identity.oidc.authorize import error_page, templates
from identity.oidc.paths import END_SESSION_PATH
from identity.oidc.server import server_for

_FIELDS = ("id_token_hint", "post_logout_redirect_uri", "state", "client_id")


def _hint_audience(runtime: Runtime, hint: str) -> str | None:
    """The client an ID token we issued was for; expired tokens still name it."""
    if len(hint) > 8192:
        return None
    try:
        decoded = jwt.decode(
            hint, runtime.keyring.verification_keys(), algorithms=["ES256", "RS256"]
        )
    except Exception:  # noqa: BLE001  (not ours, not a JWT: the same answer)
        return None
    claims = decoded.claims
    if claims.get("iss") != runtime.settings.issuer:
        return None
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    return aud if isinstance(aud, str) else None


def _where_to(request: Request, params: dict[str, str]) -> str | Response | None:
    """The validated redirect after sign-out, None for our own page, or an error page."""
    runtime: Runtime = request.app.state.runtime
    hint = params.get("id_token_hint", "")
    client_id = params.get("client_id", "")
    if hint:
        audience = _hint_audience(runtime, hint)
        if audience is None or (client_id and client_id != audience):
            return error_page(request, "invalid_request")
        client_id = audience
    uri = params.get("post_logout_redirect_uri", "")
    if not uri:
        return None
    server = server_for(request)
    with server.transaction() as (_, db):
        client = clients.find(db, client_id) if client_id else None
    if client is None or uri not in client.post_logout_redirect_uris:
        return error_page(request, "invalid_request")
    state = params.get("state", "")
    return f"{uri}{'&' if '?' in uri else '?'}{urlencode({'state': state})}" if state else uri


def _params(items: Any) -> dict[str, str]:
    return {k: v for k, v in items if k in _FIELDS and isinstance(v, str) and len(v) <= 8192}


async def end_session(request: Request) -> Response:
    params = _params(request.query_params.multi_items())
    target = await run_in_threadpool(_where_to, request, params)
    if isinstance(target, Response):
        return target
    return templates.TemplateResponse(
        request,
        "identity/oidc/logout.html",
        {"fields": sorted(params.items())},
        headers={"Cache-Control": "no-store"},
    )


async def end_session_submit(request: Request) -> Response:
    form = await read_form(request)
    params = _params(form.multi_items())
    target = await run_in_threadpool(_where_to, request, params)
    if isinstance(target, Response):
        return target
    runtime: Runtime = request.app.state.runtime
    token = request.cookies.get(sessions.cookie_name(runtime))
    if token:
        request_id = getattr(request.state, "request_id", None)
        await run_in_threadpool(signout.sign_out, runtime, token, request_id=request_id)
    response = RedirectResponse(target or "/signin?signed_out=1", status_code=303)
    sessions.clear_cookie(response, runtime)
    return response


def routes() -> list[BaseRoute]:
    return [
        Route(END_SESSION_PATH, end_session, methods=["GET"], name="oidc_end_session"),
        Route(END_SESSION_PATH, end_session_submit, methods=["POST"]),
    ]
