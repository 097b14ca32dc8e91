"""Prometheus metrics at /metrics.

With several uvicorn workers, ``carebridge serve`` sets PROMETHEUS_MULTIPROC_DIR before
they start, and each scrape aggregates every worker's files.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response

from carebridge.http.problems import problem

HTTP_REQUESTS = Counter(
    "carebridge_http_requests_total", "HTTP requests served", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "carebridge_http_request_duration_seconds",
    "Time to serve an HTTP request",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


# Clients choose the method: any other token would add a time series per made-up method.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# Each label set's two children, looked up once: ``labels()`` costs more than recording.
# Bounded as the label values are (methods above, route templates, statuses). The metrics
# are never cleared or their children removed: a cached child would stop being scraped.
_CHILDREN: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    method = method if method in _METHODS else "other"
    key = (method, route, status)
    children = _CHILDREN.get(key)
    if children is None:
        children = _CHILDREN[key] = (
            HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_DURATION.labels(method, route),
        )
    requests, duration = children
    requests.inc()
    duration.observe(seconds)


def _registry() -> CollectorRegistry:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def make_endpoint(
    token: str | None, *, production: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    """The scrape endpoint: open without a token in development only. Production refuses
    to start without one (carebridge.settings); an app made anyway answers no scrape."""
    expected = f"Bearer {token}".encode() if token else None

    async def metrics_endpoint(request: Request) -> Response:
        if expected is None and production:
            return problem(request, 403, "Metrics need CAREBRIDGE_METRICS_TOKEN in production.")
        if expected is not None:
            presented = request.headers.get("authorization", "").encode()
            if not secrets.compare_digest(presented, expected):
                return problem(
                    request,
                    401,
                    "A bearer token is required for metrics.",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)

    return metrics_endpoint
