"""The event feed (``GET /api/v1/events``) and the operators' webhook API.

Both take a client-credentials token: the feed's with ``events.read`` (a client reads
only its own events), the admin API's with ``admin.webhooks``. Whether a token still
stands (not withdrawn, its client not disabled) is identity's question: the composition
root puts the answer on ``app.state.event_hooks`` (:class:`Hooks`); this module imports
no feature.

The feed long-polls: with nothing new it waits up to ``wait`` seconds (at most
``CAREBRIDGE_EVENT_FEED_MAX_WAIT_SECONDS``), looking again every half second with a
short-lived session, so a waiting request holds no database connection; how many may
wait at once is bounded per client and per process (:mod:`.waiting`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.events import endpoints, feed, operations, waiting
from carebridge.http import bearer, openapi
from carebridge.http.bearer import AccessToken
from carebridge.http.body import read_bounded
from carebridge.http.forms import parse_json
from carebridge.http.problems import Problem
from carebridge.runtime import Runtime
from carebridge.utc import utcnow

FEED_SCOPE = "events.read"
ADMIN_SCOPE = "admin.webhooks"
POLL_SECONDS = 0.5
MAX_CLIENT_ID = 100
MAX_URL = 2000
# Room for a body one character past the models' limits fully escaped (a character outside
# the BMP is a surrogate pair, 12 bytes as JSON escapes): such a body gets the models'
# clear 422, never a 413 (schemathesis's negative cases send exactly that).
BODY_LIMIT = (MAX_CLIENT_ID + MAX_URL + 2) * 12 + 4 * 1024
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Hooks:
    """What this module asks identity, wired by the composition root."""

    in_standing: Callable[[Session, AccessToken], bool]
    client_exists: Callable[[Session, str], bool]


# Models


@openapi.component
class FeedEventOut(BaseModel):
    id: str = Field(description="The event's ID: the webhook-id of its webhook deliveries")
    type: str = Field(
        description="message.created, message.read, thread.created, thread.closed,"
        " grant.revoked, account.disabled, account.deleted, patient.roster_link_ended"
    )
    timestamp: datetime
    data: dict[str, str] = Field(description="IDs only: thread, message, patient as you know it")


@openapi.component
class EventPage(BaseModel):
    events: list[FeedEventOut]
    cursor: str = Field(description="Opaque; send it back as `after` for what comes next")


class FeedQuery(BaseModel):
    after: str | None = Field(default=None, description="The cursor of the previous answer")
    wait: int | None = Field(default=None, description="Seconds to wait for a new event")


@openapi.component
class NewEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_id: str = Field(max_length=MAX_CLIENT_ID)
    url: str = Field(max_length=MAX_URL, description="https:// (http:// outside production)")


@openapi.component
class EndpointOut(BaseModel):
    id: str
    client_id: str
    url: str
    enabled: bool
    rotating_until: datetime | None = Field(description="The previous secret signs until then")
    created_at: datetime


@openapi.component
class EndpointWithSecret(BaseModel):
    endpoint: EndpointOut
    secret: str = Field(description="whsec_...: shown this once, stored sealed")


@openapi.component
class EndpointList(BaseModel):
    endpoints: list[EndpointOut]


@openapi.component
class DeadDeliveryOut(BaseModel):
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    attempts: int
    last_error: str | None
    failed_at: datetime


@openapi.component
class DeadDeliveryList(BaseModel):
    deliveries: list[DeadDeliveryOut]


@openapi.component
class Replayed(BaseModel):
    replayed: int


class DeadQuery(BaseModel):
    endpoint: str | None = Field(default=None, description="Only this endpoint's")


# Helpers


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _hooks(request: Request) -> Hooks:
    hooks: Hooks = request.app.state.event_hooks
    return hooks


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(
        model.model_dump_json(),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )


async def _client(request: Request, scope: str, action: str) -> AccessToken:
    """The calling client's standing token, or 401/403 (audited as denied)."""
    access = bearer.require(request, scope)
    runtime, hooks = _runtime(request), _hooks(request)

    def refused() -> Problem | None:
        problem = None
        if not access.is_client_only:
            problem = Problem(403, "This needs the client's own (client credentials) token.")
        else:
            with runtime.sessions() as db:
                if not hooks.in_standing(db, access):
                    problem = bearer.invalid_token("The access token is no longer valid.")
        if problem is not None:
            with transaction(runtime.sessions) as db:
                audit.append(
                    db,
                    actor=f"client:{access.client_id}",
                    action=action,
                    outcome=Outcome.DENIED,
                    request_id=getattr(request.state, "request_id", None),
                )
        return problem

    problem = await run_in_threadpool(refused)
    if problem is not None:
        raise problem
    return access


async def _body(request: Request, model: type[M]) -> M:
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/json":
        raise Problem(415, "Send the body as application/json.")
    too_large = Problem(413, f"The request body is over the limit of {BODY_LIMIT:,} bytes.")
    return parse_json(await read_bounded(request, BODY_LIMIT, too_large), model)


def _waiting(request: Request) -> waiting.Waiting:
    # One count per application (per process), made on first use on the event loop.
    state = request.app.state
    found: waiting.Waiting | None = getattr(state, "event_feed_waiting", None)
    if found is None:
        settings = _runtime(request).settings
        found = waiting.Waiting(
            per_client=settings.event_feed_max_waiting_per_client,
            total=settings.event_feed_max_waiting,
        )
        state.event_feed_waiting = found
    return found


def _wait(request: Request, limit: int) -> int:
    raw = request.query_params.get("wait")
    if raw is None:
        return 0
    # ASCII digits only: str.isdigit() holds for "²", which int() refuses.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 3:
        raise Problem(
            400, "The request is not valid.", errors=[{"field": "wait", "message": "Seconds."}]
        )
    return min(int(raw), limit)


# The feed


@openapi.operation(
    answers={200: openapi.Json(EventPage, "Events after the cursor (possibly none)")},
    security=openapi.access_token(FEED_SCOPE),
    query=FeedQuery,
    problems=(400, 429),
)
async def list_events(request: Request) -> Response:
    """The client's events after a cursor, waiting for one if asked

    The same events as the client's webhooks, in order. Without `after`, from the oldest
    kept (events are kept CAREBRIDGE_EVENT_RETENTION_DAYS). With `wait`, an answer with
    no event comes only after that many seconds (bounded by the server).

    - 400: A cursor this client was not given, or a bad `wait`
    - 403: Not a client-credentials token, or the scope is missing
    - 429: The client already has as many requests waiting as allowed
    """
    access = await _client(request, FEED_SCOPE, "events.feed")
    runtime = _runtime(request)
    wait = _wait(request, runtime.settings.event_feed_max_wait_seconds)
    try:
        after = feed.position(runtime.keyring, access.client_id, request.query_params.get("after"))
    except feed.BadCursorError:
        raise Problem(
            400,
            "The request is not valid.",
            errors=[{"field": "after", "message": "Not a cursor this client was given."}],
        ) from None

    def look() -> feed.Batch:
        with runtime.sessions() as db:
            return feed.read(db, runtime.keyring, access.client_id, after, utcnow())

    batch = await run_in_threadpool(look)
    if not batch.events and wait:
        try:
            with _waiting(request).slot(access.client_id):
                deadline = time.monotonic() + wait
                while not batch.events and time.monotonic() < deadline:
                    await anyio.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0)))
                    batch = await run_in_threadpool(look)
        except waiting.TooManyWaitingError:
            raise Problem(
                429,
                "Too many feed requests are waiting; wait for an answer before asking again.",
                headers={"retry-after": str(max(wait, 1))},
            ) from None
    page = EventPage(
        events=[
            FeedEventOut(id=e.id, type=e.type, timestamp=e.created_at, data=e.data)
            for e in batch.events
        ],
        cursor=batch.cursor,
    )
    return _json(page)


# Operators


def _endpoint_out(info: endpoints.EndpointInfo) -> EndpointOut:
    return EndpointOut(
        id=info.id,
        client_id=info.client_id,
        url=info.url,
        enabled=info.enabled,
        rotating_until=info.rotating_until,
        created_at=info.created_at,
    )


def _actor(access: AccessToken) -> str:
    return f"client:{access.client_id}"


def _run(runtime: Runtime, work: Callable[[Session], Any]) -> Any:
    with transaction(runtime.sessions) as db:
        try:
            return work(db)
        except endpoints.EndpointError as exc:
            status = 404 if str(exc).startswith("No such") else 400
            raise Problem(status, str(exc)) from None


@openapi.operation(
    answers={201: openapi.Json(EndpointWithSecret, "Registered; the secret is shown once")},
    security=openapi.access_token(ADMIN_SCOPE),
    body=NewEndpoint,
    problems=(400, 422),
)
async def add_endpoint(request: Request) -> Response:
    """Register a webhook endpoint for a client

    - 400: Not an https URL (http outside production), or a private address
    - 422: No such client, or it is disabled
    """
    access = await _client(request, ADMIN_SCOPE, "webhook.add")
    body = await _body(request, NewEndpoint)
    runtime, hooks = _runtime(request), _hooks(request)

    def work(db: Session) -> endpoints.Created:
        if not hooks.client_exists(db, body.client_id):
            raise Problem(422, "No such client, or it is disabled.")
        return endpoints.add(
            db,
            runtime.keyring,
            runtime.settings,
            client_id=body.client_id,
            url=body.url,
            actor=_actor(access),
        )

    created: endpoints.Created = await run_in_threadpool(_run, runtime, work)
    return _json(
        EndpointWithSecret(endpoint=_endpoint_out(created.endpoint), secret=created.secret), 201
    )


@openapi.operation(
    answers={200: openapi.Json(EndpointList, "Every endpoint")},
    security=openapi.access_token(ADMIN_SCOPE),
)
async def list_endpoints(request: Request) -> Response:
    """List the webhook endpoints of every client"""
    await _client(request, ADMIN_SCOPE, "webhook.list")
    runtime = _runtime(request)

    def work() -> list[endpoints.EndpointInfo]:
        with runtime.sessions() as db:
            return endpoints.list_endpoints(db)

    found = await run_in_threadpool(work)
    return _json(EndpointList(endpoints=[_endpoint_out(info) for info in found]))


_ENDPOINT_PATH = {"endpoint_id": "The endpoint's ID (whk_...)"}


@openapi.operation(
    answers={200: openapi.Json(EndpointOut, "Disabled")},
    security=openapi.access_token(ADMIN_SCOPE),
    path=_ENDPOINT_PATH,
    problems=(404,),
)
async def disable_endpoint(request: Request) -> Response:
    """Stop delivering to an endpoint; queued deliveries become dead letters

    - 404: No such endpoint
    """
    access = await _client(request, ADMIN_SCOPE, "webhook.disable")
    runtime = _runtime(request)
    endpoint_id = str(request.path_params["endpoint_id"])

    def work(db: Session) -> endpoints.EndpointInfo:
        return endpoints.set_enabled(db, endpoint_id, enabled=False, actor=_actor(access))

    info = await run_in_threadpool(_run, runtime, work)
    return _json(_endpoint_out(info))


@openapi.operation(
    answers={200: openapi.Json(EndpointWithSecret, "Rotated; the new secret is shown once")},
    security=openapi.access_token(ADMIN_SCOPE),
    path=_ENDPOINT_PATH,
    body_required=False,
    problems=(404,),
)
async def rotate_endpoint(request: Request) -> Response:
    """Give an endpoint a new secret; the previous one signs too during the overlap

    - 404: No such endpoint
    """
    access = await _client(request, ADMIN_SCOPE, "webhook.rotate")
    runtime = _runtime(request)
    endpoint_id = str(request.path_params["endpoint_id"])

    def work(db: Session) -> endpoints.Created:
        return endpoints.rotate(
            db, runtime.keyring, runtime.settings, endpoint_id, actor=_actor(access)
        )

    created: endpoints.Created = await run_in_threadpool(_run, runtime, work)
    return _json(
        EndpointWithSecret(endpoint=_endpoint_out(created.endpoint), secret=created.secret)
    )


@openapi.operation(
    answers={200: openapi.Json(DeadDeliveryList, "Dead letters, newest first")},
    security=openapi.access_token(ADMIN_SCOPE),
    query=DeadQuery,
)
async def list_dead(request: Request) -> Response:
    """List dead-lettered webhook deliveries (IDs and reasons only)"""
    await _client(request, ADMIN_SCOPE, "webhook.dead")
    runtime = _runtime(request)
    endpoint_id = request.query_params.get("endpoint") or None

    def work() -> list[operations.DeadDelivery]:
        with runtime.sessions() as db:
            return operations.dead_deliveries(db, endpoint_id=endpoint_id)

    found = await run_in_threadpool(work)
    return _json(DeadDeliveryList(deliveries=[DeadDeliveryOut(**vars(dead)) for dead in found]))


@openapi.operation(
    answers={200: openapi.Json(Replayed, "Due again now")},
    security=openapi.access_token(ADMIN_SCOPE),
    path={"delivery_id": "The dead delivery's ID (obx_...)"},
    body_required=False,
    problems=(404,),
)
async def replay_delivery(request: Request) -> Response:
    """Deliver one dead letter again

    - 404: No such dead delivery
    """
    access = await _client(request, ADMIN_SCOPE, "webhook.replay")
    runtime = _runtime(request)
    delivery_id = str(request.path_params["delivery_id"])

    def work(db: Session) -> bool:
        return operations.replay(db, delivery_id, actor=_actor(access))

    if not await run_in_threadpool(_run, runtime, work):
        raise Problem(404, "No such dead delivery.")
    return _json(Replayed(replayed=1))


@openapi.operation(
    answers={200: openapi.Json(Replayed, "Due again now")},
    security=openapi.access_token(ADMIN_SCOPE),
    path=_ENDPOINT_PATH,
    body_required=False,
)
async def replay_endpoint(request: Request) -> Response:
    """Deliver every dead letter of an endpoint again"""
    access = await _client(request, ADMIN_SCOPE, "webhook.replay")
    runtime = _runtime(request)
    endpoint_id = str(request.path_params["endpoint_id"])

    def work(db: Session) -> int:
        return operations.replay_endpoint(db, endpoint_id, actor=_actor(access))

    count = await run_in_threadpool(_run, runtime, work)
    return _json(Replayed(replayed=count))


def routes() -> list[BaseRoute]:
    admin = "/api/v1/admin/webhooks"
    endpoint = f"{admin}/endpoints/{{endpoint_id}}"
    return [
        Route("/api/v1/events", list_events, methods=["GET"]),
        Route(f"{admin}/endpoints", list_endpoints, methods=["GET"]),
        Route(f"{admin}/endpoints", add_endpoint, methods=["POST"]),
        Route(f"{endpoint}/disable", disable_endpoint, methods=["POST"]),
        Route(f"{endpoint}/rotate", rotate_endpoint, methods=["POST"]),
        Route(f"{endpoint}/replay", replay_endpoint, methods=["POST"]),
        Route(f"{admin}/dead", list_dead, methods=["GET"]),
        Route(f"{admin}/dead/{{delivery_id}}/replay", replay_delivery, methods=["POST"]),
    ]
