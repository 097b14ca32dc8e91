"""Liveness (/healthz: the process answers) and readiness (/readyz: it can do work)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from carebridge.db import describe_error
from carebridge.http.problems import problem_json
from carebridge.runtime import Runtime

log = logging.getLogger("carebridge.health")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def readiness(runtime: Runtime) -> dict[str, str]:
    """Each check's state; "ok" or a short public reason (details go to the log)."""
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("readiness: database unreachable: %s", describe_error(exc))
        return {"database": "unreachable", "migrations": "unknown"}
    try:
        state = runtime.schema_state()
    except SQLAlchemyError as exc:
        # The connection can drop, or a role lack access to alembic_version: still a 503.
        log.warning("readiness: schema revision unreadable: %s", describe_error(exc))
        return {"database": "ok", "migrations": "unknown"}
    # A newer release's schema ("ahead") still serves: that is a rolling deploy.
    migrations = "pending" if state == "behind" else "ok"
    return {"database": "ok", "migrations": migrations}


# Probes arrive every few seconds from each balancer; under load a check per request
# would queue on the database (SQLite's write lock, the pool) for nothing.
FRESH_FOR = 1.0
# How long a probe waits for the checks: a database that does not answer within it is
# "timeout" (503), and the replica leaves rotation at once instead of when the
# balancer's own probe timeout fires.
READY_WITHIN = 1.0
_TIMED_OUT = {"database": "timeout", "migrations": "unknown"}


async def _checked(state: Any, runtime: Runtime) -> dict[str, str]:
    """The checks, in a worker thread, awaited for at most :data:`READY_WITHIN`. One runs
    at a time: probes that come while it runs await the same one, so a database that
    stopped answering holds one thread (until the engine's own bounds end its wait),
    never one per probe."""
    loop = asyncio.get_running_loop()
    running: tuple[asyncio.AbstractEventLoop, asyncio.Task[dict[str, str]]] | None = getattr(
        state, "readiness_check", None
    )
    if running is None or running[0] is not loop or running[1].done():
        task = loop.create_task(run_in_threadpool(readiness, runtime))
        running = state.readiness_check = (loop, task)
    try:
        return await asyncio.wait_for(asyncio.shield(running[1]), READY_WITHIN)
    except TimeoutError:
        log.warning("readiness: the database did not answer within %.1f s", READY_WITHIN)
        return dict(_TIMED_OUT)


async def readyz(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    state = request.app.state
    cached: tuple[float, dict[str, str]] | None = getattr(state, "readiness", None)
    if cached is not None and time.monotonic() - cached[0] < FRESH_FOR:
        checks = cached[1]
    else:
        checks = await _checked(state, runtime)
        state.readiness = (time.monotonic(), checks)
    if all(state == "ok" for state in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(f"{name} {state}" for name, state in checks.items() if state != "ok")
    return problem_json(503, f"Not ready: {failing}.", title="Service not ready", checks=checks)
