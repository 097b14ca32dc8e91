"""Signing out: the session is deleted on the server, not just forgotten by the browser.

``POST /signout`` (a form, CSRF-checked; pages include ``identity/signout_form.html``)
ends the session the cookie names, clears the cookie and goes to the sign-in page.
``POST /api/v1/signout`` ends the session its bearer token names (bearer only: an API
call never acts on a cookie).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.http import openapi
from carebridge.http.forms import read_form
from carebridge.runtime import Runtime
from identity import sessions


def sign_out(runtime: Runtime, token: str, *, request_id: str | None = None) -> bool:
    """End the session a token names; False if there was none (or it had expired)."""
    with transaction(runtime.sessions) as db:
        session = sessions.load(db, runtime, token)
        if session is None:
            return False
        sessions.end(db, session)
        actor = f"account:{session.account_id}"
        audit.append(
            db,
            actor=actor,
            action="identity.signout",
            outcome=Outcome.ALLOWED,
            target=actor,
            request_id=request_id,
        )
    return True


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def signout_submit(request: Request) -> Response:
    await read_form(request)  # CSRF: another site must not sign people out
    runtime: Runtime = request.app.state.runtime
    token = request.cookies.get(sessions.cookie_name(runtime))
    if token:
        await run_in_threadpool(sign_out, runtime, token, request_id=_request_id(request))
    response = RedirectResponse("/signin?signed_out=1", status_code=303)
    sessions.clear_cookie(response, runtime)
    return response


def _bearer(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


@openapi.operation(
    answers={204: openapi.Empty("Signed out")},
    security=openapi.session(),
    tags=("accounts",),
)
async def api_signout(request: Request) -> Response:
    """End the session the bearer token names

    The session is deleted on the server; its token stops working at once.

    - 401: No bearer token, or one that names no live session
    """
    token = _bearer(request)
    runtime: Runtime = request.app.state.runtime
    ended = token is not None and await run_in_threadpool(
        sign_out, runtime, token, request_id=_request_id(request)
    )
    if not ended:
        raise HTTPException(401, "Sign in first.", headers={"WWW-Authenticate": "Bearer"})
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    return [
        Route("/signout", signout_submit, methods=["POST"], name="signout"),
        Route("/api/v1/signout", api_signout, methods=["POST"], name="api_signout"),
    ]
