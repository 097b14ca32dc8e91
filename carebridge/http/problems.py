"""Errors: RFC 9457 problem details for API clients, friendly pages for people.

Nothing from an exception reaches a client: an unhandled error answers a generic 500 with
the request ID, and the traceback goes to the (redacted) log. A database or Redis that did
not answer in time, or cannot be reached, answers 503 with ``Retry-After`` instead, and
logs one line without a traceback (a driver's traceback quotes the SQL and its
parameters). A write whose outcome is unknown (its COMMIT or claim cut off: it may have
been done) answers 500 without ``Retry-After``, saying so, and is logged by its class and
the code's frames: a retry could do it twice. A value the database or the driver refused
(a DataError, a string that cannot be encoded) answers 400 and is logged by its class and
the code's frames only: its message would quote the value.
"""

from __future__ import annotations

import logging
import traceback
from http import HTTPStatus
from typing import Any

import redis
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from carebridge.db import describe_error, outcome_unknown, unavailable
from carebridge.http.paths import MACHINE_PATHS, OAUTH_PATHS
from carebridge.http.templates import templates
from carebridge.i18n import N_
from carebridge.logs import request_id_var

log = logging.getLogger("carebridge.errors")

PROBLEM_JSON = "application/problem+json"

# The answer to a write whose outcome is unknown: check, don't repeat.
OUTCOME_UNKNOWN = (
    "We could not confirm whether this was saved. Check before you try again: it may "
    "have been done."
)

# The answer to input the boundary refuses (carebridge.http.boundary): never the value.
REFUSED_INPUT = "The request holds control characters or invalid Unicode, which no field accepts."

_FRIENDLY: dict[int, tuple[str, str]] = {
    400: (N_("That request didn't look right"), N_("Please go back and try again.")),
    401: (N_("Please sign in"), N_("You need to sign in to see this page.")),
    403: (N_("You can't open this page"), N_("Your account doesn't have access to it.")),
    404: (N_("Page not found"), N_("We couldn't find that page. Check the link, or start again.")),
    405: (N_("That didn't work"), N_("This page can't be used that way. Please go back.")),
    413: (N_("That was too large"), N_("Please send something smaller.")),
    429: (N_("Please slow down"), N_("Too many attempts. Wait a little, then try again.")),
    500: (N_("Something went wrong on our side"), N_("Please try again in a moment.")),
    503: (N_("carebridge is briefly unavailable"), N_("Please try again in a few minutes.")),
}


def wants_json(request: Request) -> bool:
    if request.url.path.startswith(MACHINE_PATHS):
        return True
    accept = request.headers.get("accept", "")
    return "json" in accept and "text/html" not in accept


def problem_json(
    status: int,
    detail: str | None = None,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "title": title or HTTPStatus(status).phrase}
    body["status"] = status
    if detail:
        body["detail"] = detail
    body.update(extensions)
    # The reference support asks for, as the error page shows it.
    request_id = request_id_var.get()
    if request_id:
        body.setdefault("request_id", request_id)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def error_page(
    request: Request,
    status: int,
    headers: dict[str, str] | None = None,
    detail: str | None = None,
) -> Response:
    """A page for people. ``detail`` is our own wording (an HTTPException's), never an
    exception's text: unhandled errors reach here without one."""
    fallback = _FRIENDLY[500] if status >= 500 else _FRIENDLY[400]
    heading, message = _FRIENDLY.get(status, fallback)
    message = detail or message
    return templates.TemplateResponse(
        request,
        "error.html",
        {
            "status": status,
            "heading": heading,
            "message": message,
            "request_id": getattr(request.state, "request_id", None),
        },
        status_code=status,
        headers=headers,
    )


def problem(
    request: Request,
    status: int,
    detail: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    """The right error for whoever asked: problem details or a page."""
    if wants_json(request):
        return problem_json(status, detail, headers=headers, **extensions)
    return error_page(request, status, headers, detail)


class Problem(HTTPException):
    """An HTTP error with RFC 9457 extension members (``errors``, say) for API clients."""

    def __init__(
        self,
        status_code: int,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(status_code, detail, headers)
        self.extensions = extensions


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        return await unhandled_exception_handler(request, exc)
    # Starlette's default detail is the status phrase; repeating it adds nothing.
    detail = exc.detail if exc.detail != HTTPStatus(exc.status_code).phrase else None
    if exc.status_code in (204, 304) or (300 <= exc.status_code < 400 and exc.headers):
        # No body to explain: a redirect raised by a guard, or a not-modified.
        return Response(status_code=exc.status_code, headers=exc.headers)
    extensions = exc.extensions if isinstance(exc, Problem) else {}
    return problem(request, exc.status_code, detail, headers=dict(exc.headers or {}), **extensions)


# What a 503 asks clients to wait: about how long a pool takes to reconnect once the
# database answers again.
RETRY_AFTER_SECONDS = 5


def _temporarily_unavailable(exc: Exception) -> bool:
    return unavailable(exc) or isinstance(exc, redis.ConnectionError | redis.TimeoutError)


def invalid_request(request: Request, detail: str) -> Response:
    """A 400 in the shape the path speaks: an OAuth error (RFC 6749 §5.2, RFC 6750 §3.1)
    under /oauth2/, else a problem or a page (/authorize shows a page: never a redirect
    carrying what was refused)."""
    if request.url.path.startswith(OAUTH_PATHS):
        body = {"error": "invalid_request", "error_description": detail}
        return JSONResponse(body, status_code=400, headers={"Cache-Control": "no-store"})
    return problem(request, 400, detail)


async def refused_input(request: Request) -> Response:
    """The answer to input the boundary refuses (carebridge.http.boundary)."""
    return invalid_request(request, REFUSED_INPUT)


def _refused_value(exc: Exception) -> bool:
    """A value the database refused (SQLSTATE class 22), or text the driver could not
    encode (a lone surrogate): the request's input, which the boundary should have
    refused first."""
    if isinstance(exc, DataError):
        return True
    return isinstance(exc, UnicodeEncodeError) and "surrogates" in exc.reason


def _frames(exc: BaseException) -> str:
    """Where an error was raised (the code's frames), never its message or the SQL."""
    return "".join(traceback.format_tb(exc.__traceback__))


async def unhandled_exception_handler(request: Request, exc: Exception) -> Response:
    if outcome_unknown(exc):
        # Checked first: a lost connection would otherwise read as "unavailable, retry".
        log.error(
            "a write's outcome is unknown (its connection was lost as it committed): "
            "answered 500, not to be retried (%s)",
            type(getattr(exc, "orig", None) or exc).__name__,
            extra={"where": _frames(exc)},
        )
        return problem(request, 500, OUTCOME_UNKNOWN)
    if _temporarily_unavailable(exc):
        # The kind and the driver's first line only: no SQL, no parameters, no traceback.
        log.warning(
            "database unavailable, answered 503 (%s: %s)",
            type(exc).__name__,
            describe_error(exc),
        )
        return problem(
            request,
            503,
            "The service is briefly unavailable. Please try again shortly.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if _refused_value(exc):
        original = getattr(exc, "orig", None) or exc
        # The frames say where; the message would quote the value (PostgreSQL's do).
        log.error(
            "a value was refused by the database or its driver",
            extra={
                "error": type(original).__name__,
                "sqlstate": getattr(original, "sqlstate", None),
                "where": _frames(exc),
            },
        )
        return invalid_request(request, "A value in the request is not valid.")
    log.error("unhandled error", exc_info=exc)
    return problem(request, 500)
