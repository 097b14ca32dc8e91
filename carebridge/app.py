"""The web application, composed as plain data from the plumbing and the three packages."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from carebridge import audit, wiring
from carebridge.db import describe_error, unavailable
from carebridge.demo import provider_app
from carebridge.events import api as events_api
from carebridge.http import cookies, health, metrics, openapi, routing
from carebridge.http.boundary import InputBoundaryMiddleware
from carebridge.http.csrf import CsrfCookieMiddleware
from carebridge.http.middleware import (
    HostCheckMiddleware,
    RequestContextMiddleware,
    SecurityHeadersMiddleware,
    UnhandledErrorMiddleware,
)
from carebridge.http.problems import (
    http_exception_handler,
    refused_input,
    unhandled_exception_handler,
)
from carebridge.http.templates import templates_for
from carebridge.logs import configure_logging
from carebridge.runtime import Runtime
from carebridge.settings import Role, load_settings, require_production_ready
from identity import interfaces as identity
from identity import routes as identity_routes
from messaging import crypto
from messaging import routes as messaging_routes
from sms import routes as sms_routes

STATIC = StaticFiles(packages=[("carebridge.http", "static")])
log = logging.getLogger("carebridge.audit")


# The home page includes identity's account navigation for a signed-in visitor.
HOME_TEMPLATES = templates_for(identity.TEMPLATES)


async def home(request: Request) -> Response:
    """What carebridge is, and the way in; a signed-in person's account entries instead."""
    signed_in = await identity.is_signed_in(request)
    return HOME_TEMPLATES.TemplateResponse(request, "home.html", {"signed_in": signed_in})


async def favicon(request: Request) -> Response:
    """Browsers ask for /favicon.ico whatever the page links: send them to the SVG."""
    return RedirectResponse(request.url_for("static", path="/favicon.svg").path, 301)


def routes(runtime: Runtime) -> list[BaseRoute]:
    token = runtime.settings.metrics_token
    # A tree by path segment: a request is matched without trying every route's regex.
    return routing.tree(
        [
            Route("/", home, name="home"),
            Route("/favicon.ico", favicon, name="favicon"),
            Route("/healthz", health.healthz, name="healthz"),
            Route("/readyz", health.readyz, name="readyz"),
            Route(
                "/metrics",
                metrics.make_endpoint(
                    token.get_secret_value() if token else None,
                    production=runtime.settings.is_production,
                ),
            ),
            Route("/api/openapi.json", openapi.openapi, name="openapi"),
            Mount("/static", STATIC, name="static"),
            *identity_routes.routes(),
            *messaging_routes.routes(),
            *sms_routes.routes(),
            *events_api.routes(),
            *(provider_app.routes() if runtime.settings.demo else []),
        ]
    )


async def chain_audit_records(runtime: Runtime) -> None:
    """Link new audit records into the chain every ``audit_chain_seconds`` (PostgreSQL):
    requests write them without waiting on the chain (carebridge.audit)."""
    while True:
        await anyio.sleep(runtime.settings.audit_chain_seconds)
        try:
            await anyio.to_thread.run_sync(audit.chain_all, runtime.sessions)
        except Exception as exc:
            if unavailable(exc):  # a stall or an outage: one line a try, no traceback
                log.warning(
                    "audit chaining: database unavailable (%s); retrying", describe_error(exc)
                )
            else:
                log.exception("audit chaining failed; retrying")


async def forget_expired_keys() -> None:
    """Drop thread keys past their time in this process even when no request comes
    (messaging.crypto keeps recently unwrapped ones)."""
    while True:
        await anyio.sleep(5)
        crypto.forget_expired()


def create_app(runtime: Runtime) -> Starlette:
    settings = runtime.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            if not settings.uses_sqlite:
                tasks.start_soon(chain_audit_records, runtime)
            tasks.start_soon(forget_expired_keys)
            yield
            tasks.cancel_scope.cancel()
        await runtime.close_loop_connections()
        runtime.close()

    app = Starlette(
        routes=routes(runtime),
        middleware=[
            # Outermost first: every response, errors included, gets an ID and headers.
            Middleware(RequestContextMiddleware),
            Middleware(SecurityHeadersMiddleware, hsts=settings.issuer_is_https),
            Middleware(HostCheckMiddleware, allowed_hosts=settings.effective_allowed_hosts),
            # Before routing: no path, query or header that is not text gets in, and none
            # of the app's cookies that is not text is read (not even the CSRF cookie
            # below: a corrupted one is replaced, not kept).
            Middleware(
                InputBoundaryMiddleware,
                refusal=refused_input,
                cookies=cookies.names_read(settings.issuer_is_https),
            ),
            Middleware(CsrfCookieMiddleware),
            Middleware(UnhandledErrorMiddleware, handler=unhandled_exception_handler),
        ],
        exception_handlers={
            HTTPException: http_exception_handler,
            Exception: unhandled_exception_handler,
        },
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    # What identity needs from outside (identity.interfaces.Outward), wired here.
    app.state.outward = wiring.identity_outward(runtime)
    # What the event feed and the webhook API ask identity (carebridge.events.api.Hooks).
    app.state.event_hooks = wiring.event_hooks()
    # A call says the care team's name (where the patient allows it) when answered.
    app.state.team_names = wiring.MessagingTeamNames()
    return app


def create_app_from_env() -> Starlette:
    """uvicorn's factory: each worker process builds its own app from the environment."""
    settings = load_settings()
    require_production_ready(settings)
    configure_logging(settings.log_level, settings.log_format)
    runtime = Runtime.build(settings, Role.WEB)
    runtime.keyring  # noqa: B018  (a missing or corrupt keyring stops the worker now)
    return create_app(runtime)
