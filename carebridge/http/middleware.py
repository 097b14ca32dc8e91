"""Pure ASGI middleware: request IDs, access log and metrics; security headers."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carebridge.http import metrics
from carebridge.logs import redact, request_id_var

access_log = logging.getLogger("carebridge.access")

# A proxy's request ID is kept only if it cannot smuggle anything into a log line.
_INCOMING_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")

# No form-action: Chromium applies it to every redirect a form submission leads to, and
# ours end at other origins by design (an authorization response to a provider app's
# redirect URI, an upstream provider, a post-logout URI). Form targets are fixed in
# autoescaped templates, and every form is CSRF-checked.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


_REQUEST_ID = b"x-request-id"


def _header(scope: Scope, name: bytes) -> str:
    """A request header's first value, or "" (ASGI servers give names in lower case)."""
    headers = scope["headers"]
    if not isinstance(headers, list):
        # Any iterable is allowed: read once, kept for the layers below as Starlette does.
        headers = scope["headers"] = list(headers)
    for key, value in headers:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def _route_label(scope: Scope) -> str:
    # The route's template ("/threads/{id}"), never the raw path: bounded label values.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    """Gives each request an ID (logs, response header) and records its outcome."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, _REQUEST_ID)
        # The ID is written to every log line unredacted, so it must not be PHI-shaped either.
        well_formed = _INCOMING_REQUEST_ID.fullmatch(incoming) and redact(incoming) == incoming
        request_id = incoming if well_formed else secrets.token_hex(16)
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != _REQUEST_ID]
                headers.append((_REQUEST_ID, request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_label(scope)
            metrics.observe_request(scope["method"], route, status, elapsed)
            # Path without the query string: queries are where stray identifiers travel.
            # Input the boundary refused is not written at all: where, never what.
            refused = scope["state"].get("input_refused")
            entry = {
                "method": scope["method"],
                "path": scope["path"] if refused is None else None,
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
            }
            if refused is not None:
                entry["refused"] = refused
            access_log.info("request", extra=entry)
            request_id_var.reset(token)


class SecurityHeadersMiddleware:
    """Safe defaults on every response; a handler that sets a header on purpose wins."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        defaults = [
            ("content-security-policy", CONTENT_SECURITY_POLICY),
            ("x-frame-options", "DENY"),
            # Never a Referer to another site; not "no-referrer", which makes browsers send
            # "Origin: null" with our own forms, and the CSRF check refuses those.
            ("referrer-policy", "same-origin"),
            ("x-content-type-options", "nosniff"),
            ("cross-origin-opener-policy", "same-origin"),
            ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
            # Pages carry patient data: nothing is cached unless a handler says so.
            ("cache-control", "no-store"),
        ]
        if hsts:
            defaults.append(("strict-transport-security", "max-age=63072000; includeSubDomains"))
        # As raw ASGI header pairs, encoded once: every response takes them.
        self.defaults = [(name.encode(), value.encode()) for name, value in defaults]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(pair for pair in self.defaults if pair[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class UnhandledErrorMiddleware:
    """Answers an unhandled exception inside the middleware above it.

    Starlette's own 500 handling sits outside every user middleware, so its response would
    carry neither the request ID nor the security headers, and its log record would be
    written after the request ID is gone. Placed innermost, this one renders the same
    handler's response where both still apply.
    """

    def __init__(
        self, app: ASGIApp, *, handler: Callable[[Request, Exception], Awaitable[Response]]
    ) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            if started:  # too late for an error response; let the server close the connection
                raise
            response = await self.handler(Request(scope, receive), exc)
            await response(scope, receive, send)


class HostCheckMiddleware(TrustedHostMiddleware):
    """Rejects a Host header that is not ours (CVE-2026-48710), except on the probes.

    Orchestrators probe by address (a pod IP, 127.0.0.1) and Prometheus scrapes the same
    way; those endpoints build no URLs from the Host header, so it cannot mislead them.
    """

    PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
