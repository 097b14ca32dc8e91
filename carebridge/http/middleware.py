"""Pure ASGI middleware: request IDs, access log and metrics; security headers."""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carebridge.http import metrics
from carebridge.logs import request_id_var

access_log = logging.getLogger("carebridge.access")

# A proxy's request ID is kept only if it cannot smuggle anything into a log line.
_INCOMING_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


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
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if _INCOMING_REQUEST_ID.fullmatch(incoming) else secrets.token_hex(16)
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_label(scope)
            metrics.observe_request(scope["method"], route, status, elapsed)
            # Path without the query string: queries are where stray identifiers travel.
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            request_id_var.reset(token)


class SecurityHeadersMiddleware:
    """Safe defaults on every response; a handler that sets a header on purpose wins."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.defaults = [
            ("content-security-policy", CONTENT_SECURITY_POLICY),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
            ("x-content-type-options", "nosniff"),
            ("cross-origin-opener-policy", "same-origin"),
            ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
            # Pages carry patient data: nothing is cached unless a handler says so.
            ("cache-control", "no-store"),
        ]
        if hsts:
            self.defaults.append(
                ("strict-transport-security", "max-age=63072000; includeSubDomains")
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.defaults:
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
