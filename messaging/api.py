"""The messaging JSON API: an OAuth resource server for patients' and care teams' tokens.

Every endpoint checks the bearer token offline (carebridge.http.bearer: signature through
the keyring's published keys, issuer, audience, lifetime, scope), resolves who it acts for
(messaging.access) and answers 404 for any thread that is not theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from carebridge import audit
from carebridge.db import transaction
from carebridge.http import bearer, openapi
from carebridge.http import body as request_body
from carebridge.http.boundary import MultilineText
from carebridge.http.forms import parse_json
from carebridge.http.problems import Problem
from carebridge.i18n import N_
from carebridge.runtime import Runtime
from messaging import break_glass, care_teams, export, files, invites, reads, relationships, threads
from messaging.access import (
    ATTACHMENT_ID,
    Actor,
    Caller,
    RefusedError,
    perform,
    thread_target,
)
from messaging.threads import AttachmentView, MessageView, ThreadView

READ = "messaging.read"
WRITE = "messaging.write"
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


# Bodies


@openapi.component
class NewThread(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=40,
        description="A care team's token: the opaque patient ID (and no care_team_id)",
    )
    care_team_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=40,
        description="A patient's token: one of their care teams (GET .../care-teams)",
    )
    topic_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=40,
        description="A patient's token: a topic that team offers",
    )
    subject: MultilineText = Field(min_length=1, max_length=threads.MAX_SUBJECT)
    body: MultilineText = Field(min_length=1, description="Plain text; never rendered as HTML")
    pool_id: str | None = Field(
        default=None,
        max_length=40,
        description="Route to one of the team's pools; default: the team-wide pool",
    )


@openapi.component
class NewMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: MultilineText = Field(min_length=1, description="Plain text; never rendered as HTML")


@openapi.component
class MarkRead(BaseModel):
    model_config = ConfigDict(extra="forbid")
    through: int | None = Field(
        default=None, ge=0, description="Last message seq read; default: all"
    )


@openapi.component
class AttachmentOut(BaseModel):
    id: str
    filename: str = Field(description="Sanitised; show as text")
    content_type: str = Field(description="Detected from the content")
    size: int


@openapi.component
class MessageOut(BaseModel):
    id: str
    seq: int
    author_kind: str = Field(description="patient, staff or app")
    author_id: str | None = Field(description="For care teams; always null for patients")
    body: str
    created_at: datetime
    attachments: list[AttachmentOut]
    read: bool | None = Field(
        description="For a message from the caller's side: whether the other side has read"
        " it (a care team has when any of its staff did; never who). Null for the other"
        " side's messages"
    )


@openapi.component
class ThreadOut(BaseModel):
    id: str
    patient_id: str | None = Field(
        description="The opaque patient ID, for care teams; null for a patient's own apps"
    )
    care_team_id: str
    care_team_name: str
    subject: str
    status: str = Field(description="open or closed")
    created_at: datetime
    last_message_at: datetime
    unread: int = Field(
        description="The other side's messages the caller's side has not read (a care team's"
        " staff share one read state; an app's own token reads for nobody)"
    )
    other_side_read_seq: int = Field(
        description="How far the other side has read: the last message seq it read, 0 if none"
    )
    patient_notice: str | None = Field(
        default=None,
        description=(
            "For a care team reading one thread: how the patient's notice of its latest"
            " new message went. waiting (quiet hours or a cap: it will go), sent,"
            " unreachable (the patient could not be notified: no usable contact; reach"
            " them another way) or not_sent; null for patients, in lists, and when no"
            " notice was written"
        ),
    )
    pool_id: str | None = Field(
        default=None, description="The team's pool the thread is routed to; null: team-wide"
    )
    started_by: str = Field(description="team, or patient (the patient wrote first)")
    topic_id: str | None = Field(description="The topic a patient chose, if they started it")
    escalated_at: datetime | None = Field(
        description="When a patient-started thread was escalated, unanswered too long"
    )
    overdue: bool = Field(
        default=False,
        description="In a care team's list: escalated and still unanswered (open); such"
        " threads are listed first. Always false for a patient and when reading one thread",
    )


@openapi.component
class ThreadList(BaseModel):
    threads: list[ThreadOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page")


@openapi.component
class ThreadDetail(BaseModel):
    thread: ThreadOut
    messages: list[MessageOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page")


@openapi.component
class BreakGlass(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(
        max_length=break_glass.MAX_REASON,
        description="Why emergency access is needed (audited; shown to the team admins)",
    )


@openapi.component
class BreakGlassOut(BaseModel):
    thread_id: str
    expires_at: datetime = Field(description="Until when this staff member sees the thread")


@openapi.component
class BreakGlassEventOut(BaseModel):
    id: str
    account_id: str = Field(description="The staff member who used emergency access")
    thread_id: str
    created_at: datetime
    expires_at: datetime
    reason: str | None = Field(description="Their typed reason; null once the thread is shredded")


@openapi.component
class BreakGlassReport(BaseModel):
    events: list[BreakGlassEventOut]


@openapi.component
class NewInvite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(min_length=3, max_length=invites.MAX_EMAIL, description="Who to invite")
    role: str = Field(min_length=1, max_length=100, description="One of the team's roles")


@openapi.component
class InviteOut(BaseModel):
    id: str
    expires_at: datetime = Field(description="Until when the one-time link works")


@openapi.component
class ReadState(BaseModel):
    last_read_seq: int


@openapi.component
class TeamUnreadOut(BaseModel):
    care_team_id: str
    care_team_name: str
    unread_messages: int = Field(description="The other side's messages not yet read")
    unread_threads: int = Field(description="Threads with at least one unread message")


@openapi.component
class UnreadSummary(BaseModel):
    unread_messages: int
    unread_threads: int
    care_teams: list[TeamUnreadOut] = Field(
        description="A care team's token: its team's line; a patient's: one per team they"
        " have conversations with"
    )


@openapi.component
class TopicOut(BaseModel):
    id: str
    label: str


@openapi.component
class CareTeamOut(BaseModel):
    id: str
    name: str
    topics: list[TopicOut]


@openapi.component
class CareTeamList(BaseModel):
    care_teams: list[CareTeamOut]


@openapi.component
class NewRelationship(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(min_length=1, max_length=40, description="The opaque patient ID")


@openapi.component
class EndRelationship(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(min_length=1, max_length=40, description="The opaque patient ID")
    reason: str = Field(
        min_length=1, max_length=relationships.MAX_REASON, description="Why; never PHI"
    )


@openapi.component
class RelationshipOut(BaseModel):
    id: str
    patient_id: str
    care_team_id: str
    source: str = Field(description="staff, app, operator, roster, thread or migration")
    created_by: str
    created_at: datetime
    ended_at: datetime | None
    ended_by: str | None
    end_reason: str | None


@openapi.component
class RelationshipList(BaseModel):
    relationships: list[RelationshipOut]


class RelationshipQuery(BaseModel):
    patient_id: str | None = Field(default=None, description="Only this patient's history")


# Query parameters (described from these models; the handlers read them as before).


class PageQuery(BaseModel):
    cursor: str | None = Field(default=None, description="From next_cursor of the last page")
    limit: int | None = Field(
        default=None, ge=1, le=threads.PAGE_MAX, description="Items a page; default 25"
    )


class AttachmentQuery(BaseModel):
    filename: str = Field(max_length=255, description="The file's name, sanitised")


# Responses are built from our own typed views: construct, don't validate again (a page
# of messages is a hundred models; validating each is most of a read's CPU time).


def _thread_out(view: ThreadView) -> ThreadOut:
    return ThreadOut.model_construct(**view.__dict__)


@dataclass(frozen=True)
class _Detail:
    thread: ThreadView
    messages: list[MessageView]
    next_cursor: str | None


# Messages, and a thread with its page of them, serialized straight from the views (the
# shapes of MessageOut and ThreadDetail, which the OpenAPI document describes; tests hold
# them together): a read is the hot path, and a model per message was most of its
# serialization time. "mine" is for the pages only.
_DETAIL = TypeAdapter(_Detail)
_MESSAGE = TypeAdapter(MessageView)


def _detail(
    view: ThreadView,
    page: threads.Page[MessageView],
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    detail = _Detail(view, page.items, page.next_cursor)
    body = _DETAIL.dump_json(detail, exclude={"messages": {"__all__": {"mine"}}})
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _posted(view: MessageView) -> Response:
    body = _MESSAGE.dump_json(view, exclude={"mine"})
    return Response(body, status_code=201, media_type="application/json")


# Plumbing


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def _caller(request: Request, scope: str, action: str, target: str) -> Caller:
    try:
        return Caller.of_token(bearer.require(request, scope))
    except Problem:
        # A refused token is a denied attempt too; it names no one, so neither does this.
        runtime = _runtime(request)
        await run_in_threadpool(
            _deny_token, runtime, action=action, target=target, request_id=_request_id(request)
        )
        raise


def _deny_token(runtime: Runtime, *, action: str, target: str, request_id: str | None) -> None:
    with transaction(runtime.sessions) as db:
        audit.append(
            db,
            actor="token:refused",
            action=action,
            outcome=audit.Outcome.DENIED,
            target=target,
            request_id=request_id,
        )


async def _perform(
    request: Request,
    caller: Caller,
    *,
    action: str,
    target: str,
    work: Callable[[Session, Actor], T],
) -> T:
    runtime = _runtime(request)
    try:
        return await run_in_threadpool(
            perform,
            runtime,
            caller,
            action=action,
            target=target,
            request_id=_request_id(request),
            work=work,
        )
    except RefusedError as exc:
        if exc.status == 401:
            raise bearer.invalid_token(exc.detail) from None
        raise Problem(exc.status, exc.detail) from None


def json_limit(runtime: Runtime) -> int:
    # Room for the longest body with every character escaped as \uXXXX, plus the envelope.
    return runtime.settings.message_max_chars * 12 + 16 * 1024


async def read_bounded(request: Request, limit: int, what: str) -> bytes:
    """The whole body, refused (413) as soon as it is known to be over ``limit``."""
    too_large = Problem(413, f"The {what} is over the limit of {limit:,} bytes.")
    return await request_body.read_bounded(request, limit, too_large)


async def _read_json(request: Request, model: type[M]) -> M:
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/json":
        raise Problem(415, "Send the body as application/json.")
    body = await read_bounded(request, json_limit(_runtime(request)), "request body")
    return parse_json(body, model)


def _limit(request: Request) -> int:
    limit = request.query_params.get("limit")
    try:
        # "limit=" is no number: refused like "limit=x", not read as the default.
        return threads.page_size("x" if limit == "" else limit)
    except RefusedError as exc:
        raise Problem(exc.status, exc.detail) from None


def _json(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # pydantic serializes straight to JSON bytes: no dict of dicts for json.dumps to walk.
    return Response(
        model.model_dump_json(), status_code=status, headers=headers, media_type="application/json"
    )


# Endpoints


@openapi.operation(
    answers={200: openapi.Json(ThreadList, "One page of threads")},
    security=openapi.access_token("messaging.read"),
    query=PageQuery,
)
async def list_threads(request: Request) -> Response:
    """List threads, most recent activity first, with unread counts

    A patient token lists that patient's threads; a care team's token lists the team's.

    - 400: A malformed cursor or limit
    - 401: No valid access token
    - 403: The token lacks the scope, or acts for no patient or care team
    """
    caller = await _caller(request, READ, "messaging.thread.list", "threads")
    runtime = _runtime(request)
    cursor, limit = request.query_params.get("cursor"), _limit(request)
    page = await _perform(
        request,
        caller,
        action="messaging.thread.list",
        target="threads",
        work=lambda db, actor: threads.list_threads(
            db, runtime.keyring, actor, cursor=cursor, limit=limit
        ),
    )
    items = [_thread_out(view) for view in page.items]
    return _json(ThreadList(threads=items, next_cursor=page.next_cursor))


@openapi.operation(
    answers={201: openapi.Json(ThreadDetail, "The new thread")},
    security=openapi.access_token("messaging.write"),
    body=NewThread,
    problems=(404, 409, 422),
)
async def create_thread(request: Request) -> Response:
    """Open a thread, with its first message

    A care team's token opens one with a patient, by patient_id: the patient is notified
    (by SMS, per their preferences) that a secure message is waiting; the notice carries
    no content. A first thread with a patient starts their care relationship; after the
    relationship ended, the team starts a new one explicitly (POST .../care-relationships).

    A patient's token writes first to one of their care teams (care_team_id) on a topic it
    offers (topic_id), where the team takes patient-started threads; the team's automatic
    first reply, if any, follows as the thread's second message.

    - 400: The body is not valid (care_team_id or topic_id from a team, or missing)
    - 401: No valid access token
    - 403: The scope is missing; patient_id from a patient's token; the team does not
      take patient-started threads; or the relationship with this patient ended
    - 404: No such care team of this patient
    - 409: The patient is no longer eligible (terminated on the roster, or gone from a
      full re-import); audited as denied. Their existing threads stay open.
    - 413: The message is too long
    - 422: No such patient, or no such topic of that team
    """
    caller = await _caller(request, WRITE, "messaging.thread.create", "threads")
    payload = await _read_json(request, NewThread)
    runtime = _runtime(request)

    def work(db: Session, actor: Actor) -> tuple[ThreadView, threads.Page[MessageView]]:
        if actor.kind == "patient":
            if payload.patient_id is not None:
                # Only a care team opens a thread with a patient.
                raise RefusedError(403, "Only a care team can start a conversation with a patient.")
            if not payload.care_team_id or not payload.topic_id or payload.pool_id:
                raise RefusedError(
                    400, "A patient's token sends care_team_id and topic_id (a topic routes)."
                )
            thread, _ = threads.start_by_patient(
                db,
                runtime.keyring,
                runtime.settings,
                actor,
                care_team_id=payload.care_team_id,
                topic_id=payload.topic_id,
                subject=payload.subject,
                body=payload.body,
            )
        else:
            if payload.patient_id is None or payload.care_team_id or payload.topic_id:
                raise RefusedError(
                    400, "A care team's token sends patient_id, not care_team_id or topic_id."
                )
            thread, _ = threads.create_thread(
                db,
                runtime.keyring,
                runtime.settings,
                actor,
                patient_id=payload.patient_id,
                subject=payload.subject,
                body=payload.body,
                pool_id=payload.pool_id,
            )
        return threads.get_thread(db, runtime.keyring, actor, thread.id, cursor=None, limit=1)

    view, page = await _perform(
        request, caller, action="messaging.thread.create", target="threads", work=work
    )
    return _detail(view, page, 201, {"Location": f"/api/v1/messaging/threads/{view.id}"})


@openapi.operation(
    answers={200: openapi.Json(ThreadDetail, "The thread and one page of messages")},
    security=openapi.access_token("messaging.read"),
    query=PageQuery,
    problems=(404, 410),
)
async def get_thread(request: Request) -> Response:
    """Read a thread and its messages, oldest first

    Reading does not mark messages read; POST .../read does. Any thread that is not the
    caller's answers 404, whether it exists or not.

    - 401: No valid access token
    - 404: No such thread of this caller
    - 410: The thread passed its retention period and was crypto-shredded
    """
    thread_id = str(request.path_params["thread_id"])
    target = thread_target(thread_id)
    caller = await _caller(request, READ, "messaging.thread.read", target)
    runtime = _runtime(request)
    cursor, limit = request.query_params.get("cursor"), _limit(request)
    view, page = await _perform(
        request,
        caller,
        action="messaging.thread.read",
        target=target,
        work=lambda db, actor: threads.get_thread(
            db, runtime.keyring, actor, thread_id, cursor=cursor, limit=limit
        ),
    )
    return _detail(view, page)


@openapi.operation(
    answers={201: openapi.Json(MessageOut, "The message")},
    security=openapi.access_token("messaging.write"),
    body=NewMessage,
    problems=(404, 409),
)
async def post_message(request: Request) -> Response:
    """Post a message to an open thread

    A care team's message notifies the patient (in the same transaction).

    - 400: The body is not valid
    - 403: The care relationship between the thread's patient and team ended
    - 404: No such thread of this caller
    - 409: The thread is closed
    - 413: The message is too long
    """
    thread_id = str(request.path_params["thread_id"])
    target = thread_target(thread_id)
    caller = await _caller(request, WRITE, "messaging.message.post", target)
    payload = await _read_json(request, NewMessage)
    runtime = _runtime(request)

    def work(db: Session, actor: Actor) -> MessageView:
        message = threads.post_message(
            db, runtime.keyring, runtime.settings, actor, thread_id, body=payload.body
        )
        return MessageView(
            id=message.id,
            seq=message.seq,
            author_kind=message.author_kind,
            author_id=None if actor.kind == "patient" else message.author_id,
            body=payload.body,
            created_at=message.created_at,
            read=False,  # just written: the other side has not read it yet
        )

    view = await _perform(
        request, caller, action="messaging.message.post", target=target, work=work
    )
    return _posted(view)


@openapi.operation(
    answers={201: openapi.Json(MessageOut, "The message carrying the attachment")},
    security=openapi.access_token("messaging.write"),
    body=openapi.Binary(("application/octet-stream",), "The file"),
    query=AttachmentQuery,
    problems=(404, 409),
)
async def upload_attachment(request: Request) -> Response:
    """Upload an attachment (PDF, PNG or JPEG) as a new message

    The request body is the file's bytes. The type is detected from the content, not
    from the name or the Content-Type header; the name is sanitised.

    - 404: No such thread of this caller
    - 409: The thread is closed
    - 413: The file is too large
    - 415: Not an allowed type
    """
    thread_id = str(request.path_params["thread_id"])
    target = thread_target(thread_id)
    caller = await _caller(request, WRITE, "messaging.attachment.upload", target)
    runtime = _runtime(request)
    filename = request.query_params.get("filename", "")[:255]
    content = await read_bounded(request, runtime.settings.attachment_max_bytes, "file")

    def work(db: Session, actor: Actor) -> MessageView:
        message, attachment = threads.post_attachment(
            db,
            runtime.keyring,
            runtime.settings,
            actor,
            thread_id,
            filename=filename,
            content=content,
        )
        name = files.clean_filename(filename, attachment.content_type)
        return MessageView(
            id=message.id,
            seq=message.seq,
            author_kind=message.author_kind,
            author_id=None if actor.kind == "patient" else message.author_id,
            body="",
            created_at=message.created_at,
            attachments=[
                AttachmentView(attachment.id, name, attachment.content_type, attachment.size)
            ],
            read=False,
        )

    view = await _perform(
        request, caller, action="messaging.attachment.upload", target=target, work=work
    )
    return _posted(view)


def attachment_response(download: threads.Download) -> Response:
    """The file as a download, never rendered inline or sniffed as another type."""
    return Response(
        download.content,
        media_type=download.content_type,
        headers={
            "Content-Disposition": files.content_disposition(download.filename),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
            "Content-Security-Policy": "sandbox; default-src 'none'",
        },
    )


@openapi.operation(
    answers={
        200: openapi.Binary(
            ("application/pdf", "image/png", "image/jpeg"),
            "The file, as an attachment, with its detected content type",
        )
    },
    security=openapi.access_token("messaging.read"),
    problems=(404,),
)
async def download_attachment(request: Request) -> Response:
    """Download an attachment's bytes

    - 404: No such attachment in a thread of this caller
    """
    thread_id = str(request.path_params["thread_id"])
    attachment_id = str(request.path_params["attachment_id"])
    target = (
        f"attachment:{attachment_id}"
        if ATTACHMENT_ID.fullmatch(attachment_id)
        else thread_target(thread_id)
    )
    caller = await _caller(request, READ, "messaging.attachment.download", target)
    runtime = _runtime(request)
    download = await _perform(
        request,
        caller,
        action="messaging.attachment.download",
        target=target,
        work=lambda db, actor: threads.download(
            db, runtime.keyring, actor, thread_id, attachment_id
        ),
    )
    return attachment_response(download)


@openapi.operation(
    answers={200: openapi.Json(ReadState, "The caller's read position")},
    security=openapi.access_token("messaging.write"),
    body=MarkRead,
    body_required=False,
    problems=(404,),
)
async def mark_read(request: Request) -> Response:
    """Mark a thread read, up to a message seq or entirely

    Needs messaging.write: it changes what the caller's other apps and devices show as
    unread, so a token that may only read cannot do it. Read state is per side: a staff
    member's read counts for the whole care team (the audit log names who), and the
    patient sees the team's messages as read. An app's own token (client credentials)
    reads for no person and cannot mark anything read.

    - 403: The token lacks messaging.write, or is a care team app's own token
    - 404: No such thread of this caller
    """
    thread_id = str(request.path_params["thread_id"])
    target = thread_target(thread_id)
    # A write: it clears the unread badges the caller sees everywhere.
    caller = await _caller(request, WRITE, "messaging.thread.mark_read", target)
    through: int | None = None
    if request.headers.get("content-length", "0") not in ("", "0"):
        through = (await _read_json(request, MarkRead)).through
    seq = await _perform(
        request,
        caller,
        action="messaging.thread.mark_read",
        target=target,
        work=lambda db, actor: threads.mark_read(db, actor, thread_id, through),
    )
    return _json(ReadState(last_read_seq=seq))


@openapi.operation(
    answers={200: openapi.Json(UnreadSummary, "The caller's side's unread counts")},
    security=openapi.access_token("messaging.read"),
)
async def unread_summary(request: Request) -> Response:
    """Unread counts of the caller's side, in total and per care team

    A care team's token (its app or a staff member) gets the team's counts, which every
    staff member shares: one staff member's read lowers them for all. A patient's token
    gets one line per care team. Per-thread counts are in the thread list.

    - 401: No valid access token
    - 403: The token lacks the scope, or acts for no patient or care team
    """
    caller = await _caller(request, READ, "messaging.unread", "threads")
    teams = await _perform(
        request,
        caller,
        action="messaging.unread",
        target="threads",
        work=reads.unread_by_team,
    )
    lines = [TeamUnreadOut.model_construct(**team.__dict__) for team in teams]
    return _json(
        UnreadSummary(
            unread_messages=sum(team.unread_messages for team in teams),
            unread_threads=sum(team.unread_threads for team in teams),
            care_teams=lines,
        )
    )


@openapi.operation(
    answers={204: openapi.Empty("Closed")},
    security=openapi.access_token("messaging.write"),
    problems=(404,),
)
async def close_thread(request: Request) -> Response:
    """Close a thread; no more messages can be posted

    - 403: A patient's token
    - 404: No such thread of this caller
    """
    thread_id = str(request.path_params["thread_id"])
    target = thread_target(thread_id)
    caller = await _caller(request, WRITE, "messaging.thread.close", target)
    await _perform(
        request,
        caller,
        action="messaging.thread.close",
        target=target,
        work=lambda db, actor: threads.close_thread(db, actor, thread_id),
    )
    return Response(status_code=204)


@openapi.operation(
    answers={
        200: openapi.Binary(("application/zip",), "A zip holding threads.json and the attachments")
    },
    security=openapi.access_token("messaging.read"),
)
async def export_threads(request: Request) -> Response:
    """Export every thread of the patient as a zip (JSON plus attachments)

    - 403: Not a patient's token
    """
    caller = await _caller(request, READ, "messaging.export", "threads")
    runtime = _runtime(request)
    archive = await _perform(
        request,
        caller,
        action="messaging.export",
        target="threads",
        work=lambda db, actor: export.build(db, runtime.keyring, actor),
    )
    return export.response(archive)


@openapi.operation(
    answers={200: openapi.Json(BreakGlassOut, "Emergency access granted")},
    security=openapi.access_token("messaging.read"),
    body=BreakGlass,
    problems=(404, 422),
)
async def use_break_glass(request: Request) -> Response:
    """Break the glass: open a thread of the team outside one's pools, with a reason

    For a staff member whose role does not see the thread's pool: grants them the thread
    for a few hours (break_glass_hours). Audited, and every team admin is e-mailed a
    notice (no patient, thread or reason in it) to look at the report.

    - 403: Not a staff member's token
    - 404: No such thread of this care team
    - 422: No reason, or one too short or too long
    """
    thread_id = str(request.path_params["thread_id"])
    target = thread_target(thread_id)
    caller = await _caller(request, READ, "messaging.thread.break_glass", target)
    payload = await _read_json(request, BreakGlass)
    runtime = _runtime(request)
    grant = await _perform(
        request,
        caller,
        action="messaging.thread.break_glass",
        target=target,
        work=lambda db, actor: break_glass.break_glass(
            db, runtime, actor, thread_id, reason=payload.reason
        ),
    )
    return _json(BreakGlassOut(thread_id=grant.thread_id, expires_at=grant.expires_at))


def _team_admin(actor: Actor) -> str:
    if actor.kind != "staff" or not actor.team_admin or actor.care_team_id is None:
        raise RefusedError(403, N_("Only a team admin of this care team may do this."))
    return actor.care_team_id


@openapi.operation(
    answers={200: openapi.Json(BreakGlassReport, "The team's emergency accesses")},
    security=openapi.access_token("messaging.read"),
)
async def break_glass_report(request: Request) -> Response:
    """The team's break-the-glass events, newest first, with their reasons

    - 403: Not a team admin's token
    """
    caller = await _caller(request, READ, "messaging.break_glass.report", "break_glass")
    runtime = _runtime(request)
    events = await _perform(
        request,
        caller,
        action="messaging.break_glass.report",
        target="break_glass",
        work=lambda db, actor: break_glass.report(
            db, runtime, _team_admin(actor), since=None, reasons=True
        ),
    )
    items = [BreakGlassEventOut.model_construct(**event.__dict__) for event in events]
    return _json(BreakGlassReport(events=items))


@openapi.operation(
    answers={204: openapi.Empty("Offboarded")},
    security=openapi.access_token("messaging.write"),
    problems=(404,),
)
async def offboard_staff(request: Request) -> Response:
    """Offboard a staff member: their membership, sessions and tokens end at once

    The person's web sessions end, their refresh tokens for the team's apps are revoked
    and their access tokens are refused from the next request. Audited.

    - 403: Not a team admin's token
    - 404: Not staff of this team
    """
    account_id = str(request.path_params["account_id"])
    target = f"account:{account_id}" if len(account_id) <= 40 else "account:malformed"
    caller = await _caller(request, WRITE, "messaging.staff.offboard", target)
    request_id = _request_id(request)
    runtime = _runtime(request)

    def work(db: Session, actor: Actor) -> None:
        team = _team_admin(actor)
        try:
            care_teams.offboard(
                db,
                runtime.keyring,
                team,
                account_id,
                actor=actor.participant,
                request_id=request_id,
            )
        except care_teams.CareTeamError:
            raise RefusedError(404, N_("No such staff member of this care team.")) from None

    await _perform(request, caller, action="messaging.staff.offboard", target=target, work=work)
    return Response(status_code=204)


@openapi.operation(
    answers={201: openapi.Json(InviteOut, "The invite, e-mailed")},
    security=openapi.access_token("messaging.write"),
    body=NewInvite,
    problems=(422, 429),
)
async def invite_staff(request: Request) -> Response:
    """Invite a staff member by e-mail: a one-time enrolment link for a role

    The link leads to sign-up or sign-in, a second factor, then membership with the
    role; only the invited address can use it, once, before it expires. Audited.

    - 403: Not a team admin's token
    - 422: No such role, or not an address
    - 429: Too many invites from this team in the last hour
    """
    caller = await _caller(request, WRITE, "messaging.staff.invite", "invites")
    payload = await _read_json(request, NewInvite)
    runtime = _runtime(request)

    def work(db: Session, actor: Actor) -> invites.Sent:
        team = _team_admin(actor)
        try:
            return invites.invite(
                db, runtime, team, email=payload.email, role=payload.role, actor=actor.participant
            )
        except invites.TooManyInvitesError:
            raise RefusedError(429, N_("Too many invites were sent; try again later.")) from None
        except invites.InviteError as exc:
            raise RefusedError(422, str(exc)) from None

    sent = await _perform(
        request, caller, action="messaging.staff.invite", target="invites", work=work
    )
    return _json(InviteOut(id=sent.id, expires_at=sent.expires_at), 201)


@openapi.operation(
    answers={200: openapi.Json(CareTeamList, "The care teams this patient may write to")},
    security=openapi.access_token("messaging.read"),
)
async def list_care_teams(request: Request) -> Response:
    """List the patient's care teams that take patient-started threads, with their topics

    - 401: No valid access token
    - 403: Not a patient's token, or the scope is missing
    """
    caller = await _caller(request, READ, "messaging.care_team.list", "care_teams")
    teams = await _perform(
        request,
        caller,
        action="messaging.care_team.list",
        target="care_teams",
        work=threads.teams_for_patient,
    )
    return _json(
        CareTeamList(
            care_teams=[
                CareTeamOut(
                    id=team.id,
                    name=team.name,
                    topics=[TopicOut(id=i, label=label) for i, label in team.topics],
                )
                for team in teams
            ]
        )
    )


def _team_only(actor: Actor) -> str:
    if actor.care_team_id is None:
        raise RefusedError(403, "Only a care team's token manages care relationships.")
    return actor.care_team_id


def _source(actor: Actor) -> str:
    return "staff" if actor.kind == "staff" else "app"


def _relationship_out(view: relationships.RelationshipView) -> RelationshipOut:
    return RelationshipOut(**view.__dict__)


@openapi.operation(
    answers={
        200: openapi.Json(RelationshipOut, "Already active: the relationship"),
        201: openapi.Json(RelationshipOut, "The relationship, started now"),
    },
    security=openapi.access_token("messaging.write"),
    body=NewRelationship,
    problems=(409, 422),
)
async def start_relationship(request: Request) -> Response:
    """Start a care relationship between the caller's team and a patient

    Needed to write to a patient again after the relationship ended (opening a thread
    does not bring an ended one back). Audited.

    - 403: Not a care team's token
    - 409: The patient is no longer eligible
    - 422: No such patient
    """
    caller = await _caller(request, WRITE, "messaging.care_relationship.start", "care_team")
    payload = await _read_json(request, NewRelationship)
    view, started = await _perform(
        request,
        caller,
        action="messaging.care_relationship.start",
        target="care_team",
        work=lambda db, actor: relationships.start(
            db,
            patient_id=payload.patient_id,
            team_id=_team_only(actor),
            source=_source(actor),
            actor=actor.participant,
        ),
    )
    return _json(_relationship_out(view), 201 if started else 200)


@openapi.operation(
    answers={200: openapi.Json(RelationshipOut, "The relationship, ended")},
    security=openapi.access_token("messaging.write"),
    body=EndRelationship,
    problems=(404,),
)
async def end_relationship(request: Request) -> Response:
    """End the care relationship between the caller's team and a patient

    The record is kept (history); threads stay readable, and neither side can write in
    them until a new relationship is started. Audited.

    - 403: Not a care team's token
    - 404: No active relationship with this patient
    """
    caller = await _caller(request, WRITE, "messaging.care_relationship.end", "care_team")
    payload = await _read_json(request, EndRelationship)
    view = await _perform(
        request,
        caller,
        action="messaging.care_relationship.end",
        target="care_team",
        work=lambda db, actor: relationships.end(
            db,
            patient_id=payload.patient_id,
            team_id=_team_only(actor),
            actor=actor.participant,
            reason=payload.reason,
        ),
    )
    return _json(_relationship_out(view))


@openapi.operation(
    answers={200: openapi.Json(RelationshipList, "The team's relationships, newest first")},
    security=openapi.access_token("messaging.read"),
    query=RelationshipQuery,
)
async def list_relationships(request: Request) -> Response:
    """List the caller's team's care relationships, ended ones included

    - 403: Not a care team's token
    """
    caller = await _caller(request, READ, "messaging.care_relationship.list", "care_team")
    patient_id = request.query_params.get("patient_id") or None
    views = await _perform(
        request,
        caller,
        action="messaging.care_relationship.list",
        target="care_team",
        work=lambda db, actor: relationships.history(
            db, team_id=_team_only(actor), patient_id=patient_id
        ),
    )
    return _json(RelationshipList(relationships=[_relationship_out(v) for v in views]))


def routes() -> list[BaseRoute]:
    base = "/api/v1/messaging"
    thread = f"{base}/threads/{{thread_id}}"
    return [
        Route(f"{base}/threads", list_threads, methods=["GET"]),
        Route(f"{base}/threads", create_thread, methods=["POST"]),
        Route(thread, get_thread, methods=["GET"]),
        Route(f"{thread}/messages", post_message, methods=["POST"]),
        Route(f"{thread}/attachments", upload_attachment, methods=["POST"]),
        Route(f"{thread}/attachments/{{attachment_id}}", download_attachment, methods=["GET"]),
        Route(f"{thread}/read", mark_read, methods=["POST"]),
        Route(f"{thread}/close", close_thread, methods=["POST"]),
        Route(f"{thread}/break-glass", use_break_glass, methods=["POST"]),
        Route(f"{base}/break-glass", break_glass_report, methods=["GET"]),
        Route(f"{base}/staff/invites", invite_staff, methods=["POST"]),
        Route(f"{base}/staff/{{account_id}}", offboard_staff, methods=["DELETE"]),
        Route(f"{base}/export", export_threads, methods=["GET"]),
        Route(f"{base}/unread", unread_summary, methods=["GET"]),
        Route(f"{base}/care-teams", list_care_teams, methods=["GET"]),
        Route(f"{base}/care-relationships", list_relationships, methods=["GET"]),
        Route(f"{base}/care-relationships", start_relationship, methods=["POST"]),
        Route(f"{base}/care-relationships/end", end_relationship, methods=["POST"]),
    ]
