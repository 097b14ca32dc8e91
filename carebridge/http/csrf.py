"""CSRF protection for HTML forms: a signed double-submit token and Fetch metadata.

A random value lives in a cookie; each form carries ``csrf_token`` = HMAC(pepper, value).
A cross-site page can neither read the cookie nor compute the field. The browser's own
``Sec-Fetch-Site`` and ``Origin`` headers, when sent, must also say "this site".

JSON API calls authenticate with a bearer token, never a cookie, so they need none of
this; OAuth endpoints that authenticate clients are exempt for the same reason.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from starlette.datastructures import FormData, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carebridge.http import cookies
from carebridge.http.paths import MACHINE_PATHS
from carebridge.runtime import Runtime

FIELD = "csrf_token"
_STATE_KEY = "csrf_cookie"


def cookie_name(runtime: Runtime) -> str:
    # __Host- pins the cookie to this exact origin, but browsers accept it only if Secure.
    return cookies.CSRF.name(runtime.settings.issuer_is_https)


def _runtime(connection: HTTPConnection) -> Runtime:
    runtime: Runtime = connection.app.state.runtime
    return runtime


def token(request: Request) -> str:
    """The value for a form's hidden ``csrf_token`` field (templates: ``csrf_token()``)."""
    value: str = request.scope["state"][_STATE_KEY]
    return _runtime(request).keyring.lookup_hash("csrf", value)


def _same_site(request: Request, runtime: Runtime) -> bool:
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    issuer = urlsplit(runtime.settings.issuer)
    return origin == f"{issuer.scheme}://{issuer.netloc}"


def verify(request: Request, form: FormData) -> None:
    """Refuse a state-changing form that did not come from one of our pages (403)."""
    runtime = _runtime(request)
    cookie = request.cookies.get(cookie_name(runtime), "")
    presented = form.get(FIELD)
    expected = runtime.keyring.lookup_hash("csrf", cookie) if cookie else ""
    if (
        not cookie
        or not isinstance(presented, str)
        or not secrets.compare_digest(presented.encode(), expected.encode())
        or not _same_site(request, runtime)
    ):
        raise HTTPException(403, "This form expired or came from another site. Please retry.")


class CsrfCookieMiddleware:
    """Gives every browser a CSRF cookie the first time it needs one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(MACHINE_PATHS):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        runtime = _runtime(connection)
        name = cookie_name(runtime)
        value = connection.cookies.get(name, "")
        fresh = len(value) < 32
        if fresh:
            value = secrets.token_urlsafe(32)
        scope.setdefault("state", {})[_STATE_KEY] = value

        async def send_with_cookie(message: Message) -> None:
            if fresh and message["type"] == "http.response.start":
                secure = "; Secure" if runtime.settings.issuer_is_https else ""
                MutableHeaders(scope=message).append(
                    "set-cookie", f"{name}={value}; Path=/; HttpOnly; SameSite=Lax{secure}"
                )
            await send(message)

        await self.app(scope, receive, send_with_cookie)
