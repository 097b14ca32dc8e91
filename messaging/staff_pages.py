"""The staff invite's page: ``/staff/enrol?token=...`` (messaging.invites).

The link sends its holder through identity's sign-up or sign-in and a second factor
(identity.interfaces.require_second_factor), then shows what accepting does; accepting
is a POST (CSRF-checked) so a mail scanner following the link uses nothing up. A link
reused, expired, unknown or opened by another address gets a friendly page.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from carebridge.db import transaction
from carebridge.http.forms import parse_form
from carebridge.i18n import N_
from carebridge.runtime import Runtime
from identity.interfaces import require_second_factor
from messaging import invites
from messaging.api import read_bounded
from messaging.invites import EnrolmentRefusedError, Refusal
from messaging.models import CareTeam
from messaging.pages import templates

_REFUSALS = {
    Refusal.UNKNOWN: (404, N_("This invitation link is not valid.")),
    Refusal.USED: (410, N_("This invitation was already used.")),
    Refusal.EXPIRED: (410, N_("This invitation has expired.")),
    Refusal.OTHER_ADDRESS: (
        403,
        N_("This invitation was sent to another e-mail address than the one you signed in with."),
    ),
}


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _page(request: Request, context: dict[str, Any], status_code: int = 200) -> Response:
    return templates.TemplateResponse(
        request,
        "messaging/enrol.html",
        {"refusal": None, "joined": None, **context},
        status_code=status_code,
    )


def _refused(request: Request, exc: EnrolmentRefusedError) -> Response:
    status, text = _REFUSALS[exc.refusal]
    return _page(request, {"refusal": text}, status)


async def enrol_page(request: Request) -> Response:
    account_id = await require_second_factor(request)
    runtime = _runtime(request)
    token = request.query_params.get("token", "")

    def look() -> invites.Pending:
        with runtime.sessions() as db:
            return invites.pending(db, runtime, token, account_id)

    try:
        pending = await run_in_threadpool(look)
    except EnrolmentRefusedError as exc:
        return _refused(request, exc)
    return _page(request, {"pending": pending, "token": token})


async def enrol(request: Request) -> Response:
    account_id = await require_second_factor(request)
    runtime = _runtime(request)
    form = await parse_form(request, await read_bounded(request, 4096, "form"), max_fields=2)
    token = form.get("token")
    request_id = getattr(request.state, "request_id", None)

    def accept() -> str:
        with transaction(runtime.sessions) as db:
            team_id = invites.accept(
                db,
                runtime,
                token if isinstance(token, str) else "",
                account_id,
                request_id=request_id,
            )
            team = db.get(CareTeam, team_id)
            return team.name if team is not None else team_id

    try:
        name = await run_in_threadpool(accept)
    except EnrolmentRefusedError as exc:
        await run_in_threadpool(
            invites.record_refusal, runtime, account_id, exc.refusal, request_id=request_id
        )
        return _refused(request, exc)
    return _page(request, {"joined": name})


def routes() -> list[BaseRoute]:
    return [
        Route(invites.ENROL_PATH, enrol_page, methods=["GET"]),
        Route(invites.ENROL_PATH, enrol, methods=["POST"]),
    ]
