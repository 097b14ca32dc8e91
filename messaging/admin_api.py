"""The operators' care-team API (``/api/v1/admin/care-teams``): what the CLI does, over HTTP.

For an operator's back end: a client-credentials token with ``admin.care_teams``, of a
client that acts for no care team (a team's app, or its staff, manage their own team
through the messaging API, never another through this one), still in standing. Each
endpoint calls the same function as its ``carebridge messaging`` / ``carebridge staff``
command, which audits the change with the client as the actor; a refused call is audited
as denied here. Errors are RFC 9457 problems.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.http import bearer, openapi
from carebridge.http.body import read_bounded
from carebridge.http.forms import parse_json
from carebridge.http.problems import Problem
from carebridge.runtime import Runtime
from identity.interfaces import WithdrawnError, check_client_token
from messaging import break_glass, care_teams, invites, relationships, roles, team_settings
from messaging.access import RefusedError
from messaging.api import (
    BreakGlassEventOut,
    BreakGlassReport,
    EndRelationship,
    InviteOut,
    NewInvite,
    NewRelationship,
    RelationshipList,
    RelationshipOut,
    RelationshipQuery,
    TopicOut,
)
from messaging.models import CareTeam, CareTeamClient, CareTeamRole

SCOPE = "admin.care_teams"
# Room for the longest field (the automatic reply) with every character escaped as a
# \uXXXX surrogate pair, plus the envelope: a valid body is never refused as too large.
BODY_LIMIT = team_settings.MAX_AUTO_REPLY * 12 + 16 * 1024
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
# Domain errors of the shared operations: one line, safe to show (the CLI prints them).
_DOMAIN = (
    care_teams.CareTeamError,
    roles.RoleError,
    invites.InviteError,
    relationships.RelationshipError,
)


# Bodies and answers


@openapi.component
class TeamSummary(BaseModel):
    id: str
    name: str
    retention_days: int
    clients: list[str]
    staff: int


@openapi.component
class TeamSummaryList(BaseModel):
    care_teams: list[TeamSummary]


@openapi.component
class TeamSettings(BaseModel):
    patients_may_start: bool
    auto_reply: str | None
    escalate_after_seconds: int | None = Field(description="Null: never escalated")
    roster_source: str | None
    topics: list[TopicOut] = Field(description="The topics offered now (not the retired)")


@openapi.component
class TeamSettingsChange(BaseModel):
    """Only the fields sent change; null clears auto_reply, escalation and roster source."""

    model_config = ConfigDict(extra="forbid")
    patients_may_start: bool | None = None
    auto_reply: str | None = Field(default=None, max_length=team_settings.MAX_AUTO_REPLY)
    escalate_after_seconds: int | None = Field(
        default=None,
        ge=int(team_settings.ESCALATE_MIN.total_seconds()),
        le=int(team_settings.ESCALATE_MAX.total_seconds()),
    )
    roster_source: str | None = Field(default=None, min_length=1, max_length=64)


@openapi.component
class NewTopic(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(min_length=1, max_length=team_settings.MAX_LABEL, description="No PHI")


@openapi.component
class RoleOut(BaseModel):
    id: str
    name: str
    sees_all_pools: bool
    is_team_admin: bool
    staff: int = Field(description="How many staff hold it")


@openapi.component
class RoleList(BaseModel):
    roles: list[RoleOut]


@openapi.component
class NewRole(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=roles.MAX_NAME)
    sees_all_pools: bool = False
    is_team_admin: bool = False


@openapi.component
class PoolOut(BaseModel):
    id: str
    name: str
    roles: list[str] = Field(description="The names of the roles working it")


@openapi.component
class PoolList(BaseModel):
    pools: list[PoolOut]


@openapi.component
class NewPool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=roles.MAX_NAME)
    roles: list[str] = Field(default=[], max_length=50, description="Names of the team's roles")


@openapi.component
class StaffRole(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(min_length=1, max_length=roles.MAX_NAME, description="One of the team's")


@openapi.component
class Created(BaseModel):
    id: str


# Plumbing


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _record_denied(runtime: Runtime, actor: str, action: str, target: str, rid: str | None) -> None:
    with transaction(runtime.sessions) as db:
        audit.append(
            db, actor=actor, action=action, outcome=Outcome.DENIED, target=target, request_id=rid
        )


async def _operator(request: Request, action: str, target: str) -> str:
    """The calling operator's audit name (``client:<id>``), or a problem, audited as denied:
    401/403 for a missing or weak token; 403 for a person's token or a care team's app."""
    runtime = _runtime(request)
    rid = getattr(request.state, "request_id", None)
    try:
        access = bearer.require(request, SCOPE)
    except Problem:
        await run_in_threadpool(_record_denied, runtime, "token:refused", action, target, rid)
        raise
    actor = f"client:{access.client_id}"

    def refused() -> Problem | None:
        if not access.is_client_only:
            return Problem(403, "This needs an operator's own (client credentials) token.")
        with runtime.sessions() as db:
            team = db.scalar(
                select(CareTeamClient.care_team_id).where(
                    CareTeamClient.client_id == access.client_id
                )
            )
            if team is not None:
                return Problem(403, "A care team's app is not an operator.")
            try:
                check_client_token(db, access)
            except WithdrawnError:
                return bearer.invalid_token("The access token is no longer valid.")
        return None

    problem = await run_in_threadpool(refused)
    if problem is not None:
        await run_in_threadpool(_record_denied, runtime, actor, action, target, rid)
        raise problem
    return actor


def _team_id(request: Request) -> str:
    return str(request.path_params["team_id"])[:40]


def _known_team(runtime: Runtime, team_id: str) -> None:
    with runtime.sessions() as db:
        if db.get(CareTeam, team_id) is None:
            raise Problem(404, "No such care team.")


async def _call(runtime: Runtime, team_id: str | None, work: Callable[[], T]) -> T:
    """Run a shared operation: 404 for an unknown team, 422 for its domain errors."""

    def run() -> T:
        if team_id is not None:
            _known_team(runtime, team_id)
        try:
            return work()
        except _DOMAIN as exc:
            raise Problem(422, str(exc)) from None
        except RefusedError as exc:
            raise Problem(exc.status, exc.detail) from None

    return await run_in_threadpool(run)


async def _body(request: Request, model: type[M]) -> M:
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/json":
        raise Problem(415, "Send the body as application/json.")
    too_large = Problem(413, f"The request body is over the limit of {BODY_LIMIT:,} bytes.")
    return parse_json(await read_bounded(request, BODY_LIMIT, too_large), model)


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(
        model.model_dump_json(),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )


_TEAM = {"team_id": "The care team's ID (ct_...)"}
_SECURITY = openapi.access_token(SCOPE)


# Care teams and their settings


@openapi.operation(
    answers={200: openapi.Json(TeamSummaryList, "Every care team")}, security=_SECURITY
)
async def list_teams(request: Request) -> Response:
    """List care teams, their clients and how many staff"""
    await _operator(request, "messaging.admin.care_team.list", "care_teams")
    runtime = _runtime(request)
    found = await _call(runtime, None, lambda: care_teams.list_teams(runtime))
    return _json(TeamSummaryList(care_teams=[TeamSummary(**vars(team)) for team in found]))


def _settings_out(found: team_settings.PatientThreads) -> TeamSettings:
    seconds = found.escalate_after
    return TeamSettings(
        patients_may_start=found.patients_may_start,
        auto_reply=found.auto_reply,
        escalate_after_seconds=None if seconds is None else int(seconds.total_seconds()),
        roster_source=found.roster_source,
        topics=[TopicOut(id=topic.id, label=topic.label) for topic in found.topics],
    )


@openapi.operation(
    answers={200: openapi.Json(TeamSettings, "The team's settings and topics")},
    security=_SECURITY,
    path=_TEAM,
    problems=(404,),
)
async def get_settings(request: Request) -> Response:
    """A team's settings for patient-started threads, with its topics

    - 404: No such care team
    """
    team = _team_id(request)
    await _operator(request, "messaging.admin.care_team.show", f"care_team:{team}")
    runtime = _runtime(request)
    found = await _call(runtime, team, lambda: team_settings.settings_of(runtime, team))
    return _json(_settings_out(found))


@openapi.operation(
    answers={200: openapi.Json(TeamSettings, "The team's settings, changed")},
    security=_SECURITY,
    path=_TEAM,
    body=TeamSettingsChange,
    problems=(404, 422),
)
async def change_settings(request: Request) -> Response:
    """Change whether patients may start threads, the automatic reply, the escalation delay
    and the roster source

    Only the fields sent change; null clears the automatic reply, the escalation and the
    roster source. Audited.

    - 404: No such care team
    - 422: A value out of range
    """
    team = _team_id(request)
    actor = await _operator(request, "messaging.admin.care_team.configure", f"care_team:{team}")
    change = await _body(request, TeamSettingsChange)
    runtime = _runtime(request)
    sent = change.model_fields_set

    def work() -> team_settings.PatientThreads:
        if sent & {"patients_may_start", "auto_reply", "escalate_after_seconds"}:
            seconds = change.escalate_after_seconds
            team_settings.configure(
                runtime,
                team,
                actor=actor,
                patients_may_start=change.patients_may_start,
                # "" removes it (configure's convention); absent leaves it.
                auto_reply=(change.auto_reply or "") if "auto_reply" in sent else None,
                escalate_after=None if seconds is None else timedelta(seconds=seconds),
                clear_escalation="escalate_after_seconds" in sent and seconds is None,
            )
        if "roster_source" in sent:
            team_settings.set_roster_source(runtime, team, change.roster_source, actor=actor)
        return team_settings.settings_of(runtime, team)

    return _json(_settings_out(await _call(runtime, team, work)))


# Topics


@openapi.operation(
    answers={201: openapi.Json(TopicOut, "The topic, offered now")},
    security=_SECURITY,
    path=_TEAM,
    body=NewTopic,
    problems=(404, 422),
)
async def add_topic(request: Request) -> Response:
    """Offer the team's patients a topic to write about

    - 404: No such care team
    """
    team = _team_id(request)
    actor = await _operator(request, "messaging.admin.care_team.add_topic", f"care_team:{team}")
    body = await _body(request, NewTopic)
    runtime = _runtime(request)
    topic_id = await _call(
        runtime, team, lambda: team_settings.add_topic(runtime, team, body.label, actor=actor)
    )
    return _json(TopicOut(id=topic_id, label=" ".join(body.label.split())), 201)


@openapi.operation(
    answers={204: openapi.Empty("Offered no more; threads keep naming it")},
    security=_SECURITY,
    path={**_TEAM, "topic_id": "The topic's ID (top_...)"},
    problems=(404, 422),
)
async def retire_topic(request: Request) -> Response:
    """Retire a topic: offered no more, threads on it keep it

    - 404: No such care team
    - 422: No such topic offered by the team
    """
    team = _team_id(request)
    topic = str(request.path_params["topic_id"])[:40]
    actor = await _operator(request, "messaging.admin.care_team.retire_topic", f"topic:{topic}")
    runtime = _runtime(request)
    await _call(
        runtime, team, lambda: team_settings.retire_topic(runtime, team, topic, actor=actor)
    )
    return Response(status_code=204)


# Care relationships


def _relationship(
    runtime: Runtime, work: Callable[[Session], relationships.RelationshipView]
) -> relationships.RelationshipView:
    with transaction(runtime.sessions) as db:
        return work(db)


@openapi.operation(
    answers={200: openapi.Json(RelationshipList, "The team's relationships, newest first")},
    security=_SECURITY,
    path=_TEAM,
    query=RelationshipQuery,
    problems=(404,),
)
async def list_relationships(request: Request) -> Response:
    """List a team's care relationships, ended ones included

    - 404: No such care team
    """
    team = _team_id(request)
    await _operator(request, "messaging.admin.care_relationship.list", f"care_team:{team}")
    runtime = _runtime(request)
    patient = request.query_params.get("patient_id") or None
    views = await _call(
        runtime, team, lambda: relationships.operator_history(runtime, team, patient)
    )
    return _json(RelationshipList(relationships=[RelationshipOut(**vars(v)) for v in views]))


@openapi.operation(
    answers={
        200: openapi.Json(RelationshipOut, "Already active: the relationship"),
        201: openapi.Json(RelationshipOut, "The relationship, started now"),
    },
    security=_SECURITY,
    path=_TEAM,
    body=NewRelationship,
    problems=(404, 409, 422),
)
async def start_relationship(request: Request) -> Response:
    """Start a care relationship between the team and a patient (as the operator)

    - 404: No such care team
    - 409: The patient is no longer eligible
    - 422: No such patient
    """
    team = _team_id(request)
    actor = await _operator(request, "messaging.admin.care_relationship.start", f"care_team:{team}")
    body = await _body(request, NewRelationship)
    runtime = _runtime(request)
    started: list[bool] = []

    def work(db: Session) -> relationships.RelationshipView:
        view, new = relationships.start(
            db, patient_id=body.patient_id, team_id=team, source="operator", actor=actor
        )
        started.append(new)
        return view

    view = await _call(runtime, team, lambda: _relationship(runtime, work))
    return _json(RelationshipOut(**vars(view)), 201 if started[0] else 200)


@openapi.operation(
    answers={200: openapi.Json(RelationshipOut, "The relationship, ended")},
    security=_SECURITY,
    path=_TEAM,
    body=EndRelationship,
    problems=(404,),
)
async def end_relationship(request: Request) -> Response:
    """End the care relationship between the team and a patient (history is kept)

    - 404: No such care team, or no active relationship with this patient
    """
    team = _team_id(request)
    actor = await _operator(request, "messaging.admin.care_relationship.end", f"care_team:{team}")
    body = await _body(request, EndRelationship)
    runtime = _runtime(request)
    view = await _call(
        runtime,
        team,
        lambda: _relationship(
            runtime,
            lambda db: relationships.end(
                db, patient_id=body.patient_id, team_id=team, actor=actor, reason=body.reason
            ),
        ),
    )
    return _json(RelationshipOut(**vars(view)))


# Roles, pools and staff


@openapi.operation(
    answers={200: openapi.Json(RoleList, "The team's roles")},
    security=_SECURITY,
    path=_TEAM,
    problems=(404,),
)
async def list_roles(request: Request) -> Response:
    """List the team's roles and how many staff hold each

    - 404: No such care team
    """
    team = _team_id(request)
    await _operator(request, "messaging.admin.role.list", f"care_team:{team}")
    runtime = _runtime(request)
    found = await _call(runtime, team, lambda: roles.list_roles(runtime, team))
    return _json(RoleList(roles=[RoleOut(**vars(role)) for role in found]))


@openapi.operation(
    answers={201: openapi.Json(Created, "The role")},
    security=_SECURITY,
    path=_TEAM,
    body=NewRole,
    problems=(404, 422),
)
async def add_role(request: Request) -> Response:
    """Add a role to the team

    - 404: No such care team
    - 422: The team already has a role of that name
    """
    team = _team_id(request)
    actor = await _operator(request, "messaging.admin.role.add", f"care_team:{team}")
    body = await _body(request, NewRole)
    runtime = _runtime(request)
    role_id = await _call(
        runtime,
        team,
        lambda: roles.add_role(
            runtime,
            team,
            body.name,
            sees_all_pools=body.sees_all_pools,
            is_team_admin=body.is_team_admin,
            actor=actor,
        ),
    )
    return _json(Created(id=role_id), 201)


@openapi.operation(
    answers={204: openapi.Empty("Removed")},
    security=_SECURITY,
    path={**_TEAM, "role_id": "The role's ID (role_...)"},
    problems=(404, 422),
)
async def remove_role(request: Request) -> Response:
    """Remove a role no staff holds

    - 404: No such care team, or no such role of it
    - 422: Staff hold the role: give them another first
    """
    team = _team_id(request)
    role_id = str(request.path_params["role_id"])[:40]
    actor = await _operator(request, "messaging.admin.role.remove", f"role:{role_id}")
    runtime = _runtime(request)

    def work() -> None:
        with runtime.sessions() as db:
            role = db.get(CareTeamRole, role_id)
            name = role.name if role is not None and role.care_team_id == team else None
        if name is None:
            raise Problem(404, "No such role of this care team.")
        roles.remove_role(runtime, team, name, actor=actor)

    await _call(runtime, team, work)
    return Response(status_code=204)


@openapi.operation(
    answers={200: openapi.Json(PoolList, "The team's pools")},
    security=_SECURITY,
    path=_TEAM,
    problems=(404,),
)
async def list_pools(request: Request) -> Response:
    """List the team's pools and the roles working each

    - 404: No such care team
    """
    team = _team_id(request)
    await _operator(request, "messaging.admin.pool.list", f"care_team:{team}")
    runtime = _runtime(request)
    found = await _call(runtime, team, lambda: roles.list_pools(runtime, team))
    return _json(PoolList(pools=[PoolOut(**vars(pool)) for pool in found]))


@openapi.operation(
    answers={201: openapi.Json(Created, "The pool")},
    security=_SECURITY,
    path=_TEAM,
    body=NewPool,
    problems=(404, 422),
)
async def add_pool(request: Request) -> Response:
    """Add a pool worked by the named roles

    - 404: No such care team
    - 422: No such role, or the team already has a pool of that name
    """
    team = _team_id(request)
    actor = await _operator(request, "messaging.admin.pool.add", f"care_team:{team}")
    body = await _body(request, NewPool)
    runtime = _runtime(request)
    pool_id = await _call(
        runtime,
        team,
        lambda: roles.add_pool(runtime, team, body.name, roles=body.roles, actor=actor),
    )
    return _json(Created(id=pool_id), 201)


@openapi.operation(
    answers={204: openapi.Empty("Removed; its threads go to the team-wide pool")},
    security=_SECURITY,
    path={**_TEAM, "pool_id": "The pool's ID (pool_...)"},
    problems=(404, 422),
)
async def remove_pool(request: Request) -> Response:
    """Remove a pool; its threads fall back to the team-wide pool

    - 404: No such care team
    - 422: No such pool of the team
    """
    team = _team_id(request)
    pool = str(request.path_params["pool_id"])[:40]
    actor = await _operator(request, "messaging.admin.pool.remove", f"pool:{pool}")
    runtime = _runtime(request)
    await _call(runtime, team, lambda: roles.remove_pool(runtime, team, pool, actor=actor))
    return Response(status_code=204)


@openapi.operation(
    answers={204: openapi.Empty("The staff member holds the role now")},
    security=_SECURITY,
    path={**_TEAM, "account_id": "The staff member's account ID"},
    body=StaffRole,
    problems=(404, 422),
)
async def set_staff_role(request: Request) -> Response:
    """Give a staff member another of the team's roles

    - 404: No such care team
    - 422: Not staff of the team, or no such role
    """
    team = _team_id(request)
    account = str(request.path_params["account_id"])[:40]
    actor = await _operator(request, "messaging.admin.staff.role", f"account:{account}")
    body = await _body(request, StaffRole)
    runtime = _runtime(request)
    await _call(
        runtime, team, lambda: roles.set_staff_role(runtime, team, account, body.role, actor=actor)
    )
    return Response(status_code=204)


@openapi.operation(
    answers={204: openapi.Empty("Offboarded")},
    security=_SECURITY,
    path={**_TEAM, "account_id": "The staff member's account ID"},
    problems=(404, 422),
)
async def offboard_staff(request: Request) -> Response:
    """Offboard a staff member: membership, sessions and tokens end at once

    - 404: No such care team
    - 422: Not staff of the team
    """
    team = _team_id(request)
    account = str(request.path_params["account_id"])[:40]
    actor = await _operator(request, "messaging.admin.staff.offboard", f"account:{account}")
    runtime = _runtime(request)
    rid = getattr(request.state, "request_id", None)
    await _call(
        runtime,
        team,
        lambda: care_teams.remove_staff(runtime, team, account, actor=actor, request_id=rid),
    )
    return Response(status_code=204)


@openapi.operation(
    answers={201: openapi.Json(InviteOut, "The invite, e-mailed")},
    security=_SECURITY,
    path=_TEAM,
    body=NewInvite,
    problems=(404, 422, 429),
)
async def invite_staff(request: Request) -> Response:
    """Invite a staff member by e-mail: a one-time enrolment link for a role

    - 404: No such care team
    - 422: No such role, or not an address
    - 429: Too many invites from this team in the last hour
    """
    team = _team_id(request)
    actor = await _operator(request, "messaging.admin.staff.invite", f"care_team:{team}")
    body = await _body(request, NewInvite)
    runtime = _runtime(request)

    def work() -> invites.Sent:
        try:
            with transaction(runtime.sessions) as db:
                return invites.invite(
                    db, runtime, team, email=body.email, role=body.role, actor=actor
                )
        except invites.TooManyInvitesError:
            raise Problem(429, "Too many invites were sent; try again later.") from None

    sent = await _call(runtime, team, work)
    return _json(InviteOut(id=sent.id, expires_at=sent.expires_at), 201)


@openapi.operation(
    answers={200: openapi.Json(BreakGlassReport, "The team's emergency accesses (no reasons)")},
    security=_SECURITY,
    path=_TEAM,
    problems=(404,),
)
async def break_glass_report(request: Request) -> Response:
    """The team's break-the-glass events, newest first

    Without the reasons, like the CLI's report: they are sealed with the thread and shown
    to the team's admins only.

    - 404: No such care team
    """
    team = _team_id(request)
    await _operator(request, "messaging.admin.break_glass.report", f"care_team:{team}")
    runtime = _runtime(request)

    def work() -> list[break_glass.BreakGlassEvent]:
        with runtime.sessions() as db:
            return break_glass.report(db, runtime, team, since=None, reasons=False)

    events = await _call(runtime, team, work)
    return _json(BreakGlassReport(events=[BreakGlassEventOut(**vars(e)) for e in events]))


def routes() -> list[BaseRoute]:
    base = "/api/v1/admin/care-teams"
    team = f"{base}/{{team_id}}"
    return [
        Route(base, list_teams, methods=["GET"]),
        Route(team, get_settings, methods=["GET"]),
        Route(team, change_settings, methods=["PATCH"]),
        Route(f"{team}/topics", add_topic, methods=["POST"]),
        Route(f"{team}/topics/{{topic_id}}", retire_topic, methods=["DELETE"]),
        Route(f"{team}/care-relationships", list_relationships, methods=["GET"]),
        Route(f"{team}/care-relationships", start_relationship, methods=["POST"]),
        Route(f"{team}/care-relationships/end", end_relationship, methods=["POST"]),
        Route(f"{team}/roles", list_roles, methods=["GET"]),
        Route(f"{team}/roles", add_role, methods=["POST"]),
        Route(f"{team}/roles/{{role_id}}", remove_role, methods=["DELETE"]),
        Route(f"{team}/pools", list_pools, methods=["GET"]),
        Route(f"{team}/pools", add_pool, methods=["POST"]),
        Route(f"{team}/pools/{{pool_id}}", remove_pool, methods=["DELETE"]),
        Route(f"{team}/staff/invites", invite_staff, methods=["POST"]),
        Route(f"{team}/staff/{{account_id}}/role", set_staff_role, methods=["PUT"]),
        Route(f"{team}/staff/{{account_id}}", offboard_staff, methods=["DELETE"]),
        Route(f"{team}/break-glass", break_glass_report, methods=["GET"]),
    ]
