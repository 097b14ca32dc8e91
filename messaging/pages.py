"""The patient's pages: inbox, thread view, reply with an attachment, download, export.

Every page needs a finished sign-in and a verified patient ID
(identity.interfaces.require_patient). Message text is rendered by autoescaping templates as
text; another patient's thread shows the same 404 page as one that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge.http.forms import parse_form
from carebridge.http.problems import Problem
from carebridge.http.templates import templates_for
from carebridge.i18n import N_
from carebridge.runtime import Runtime
from identity.interfaces import require_patient
from messaging import export, files, reads, threads
from messaging.access import Actor, Caller, RefusedError, perform, thread_target
from messaging.api import attachment_response, read_bounded
from messaging.threads import MessageView, Page, ThreadView

T = TypeVar("T")
templates = templates_for(Path(__file__).resolve().parent / "templates")
_KINDS = {
    "application/pdf": N_("PDF"),
    "image/png": N_("PNG image"),
    "image/jpeg": N_("JPEG image"),
}
_ACCEPT = {"pdf": ".pdf,application/pdf", "png": ".png,image/png", "jpeg": ".jpg,.jpeg,image/jpeg"}
_PAGE = 50


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def _run(
    request: Request,
    caller: Caller,
    action: str,
    target: str,
    work: Callable[[Session, Actor], T],
) -> T:
    try:
        return await run_in_threadpool(
            perform,
            _runtime(request),
            caller,
            action=action,
            target=target,
            request_id=_request_id(request),
            work=work,
        )
    except RefusedError as exc:
        raise Problem(exc.status, exc.detail) from None


async def inbox(request: Request) -> Response:
    _, patient_id = await require_patient(request)
    runtime = _runtime(request)
    cursor = request.query_params.get("cursor")

    def work(db: Session, actor: Actor) -> tuple[Page[ThreadView], int]:
        page = threads.list_threads(db, runtime.keyring, actor, cursor=cursor, limit=_PAGE)
        return page, reads.unread_total(db, actor)

    page, unread = await _run(
        request, Caller.of_patient(patient_id), "messaging.thread.list", "threads", work
    )
    return templates.TemplateResponse(
        request, "messaging/inbox.html", {"page": page, "unread": unread}
    )


def _thread_context(runtime: Runtime) -> dict[str, Any]:
    settings = runtime.settings
    return {
        "kinds": _KINDS,
        "max_chars": settings.message_max_chars,
        "max_mb": round(settings.attachment_max_bytes / (1024 * 1024), 1),
        "allowed": files.allowed_names(settings.attachment_types),
        "accept": ",".join(_ACCEPT[kind] for kind in settings.attachment_types),
    }


async def _show_thread(
    request: Request,
    patient_id: str,
    thread_id: str,
    *,
    cursor: str | None = None,
    error: str | None = None,
    draft: str = "",
    status_code: int = 200,
) -> Response:
    runtime = _runtime(request)

    def work(db: Session, actor: Actor) -> tuple[ThreadView, Page[MessageView]]:
        return threads.get_thread(
            db, runtime.keyring, actor, thread_id, cursor=cursor, limit=_PAGE, mark_read=True
        )

    thread, page = await _run(
        request,
        Caller.of_patient(patient_id),
        "messaging.thread.read",
        thread_target(thread_id),
        work,
    )
    context = {
        **_thread_context(runtime),
        "thread": thread,
        "page": page,
        "error": error,
        "draft": draft,
        "notice": N_("Your message was sent.") if request.query_params.get("sent") else None,
    }
    return templates.TemplateResponse(
        request, "messaging/thread.html", context, status_code=status_code
    )


async def thread_page(request: Request) -> Response:
    _, patient_id = await require_patient(request)
    thread_id = str(request.path_params["thread_id"])
    return await _show_thread(
        request, patient_id, thread_id, cursor=request.query_params.get("cursor")
    )


async def _reply_form(request: Request, runtime: Runtime) -> tuple[str, UploadFile | None]:
    """The multipart reply, bounded before it is parsed, CSRF-checked, its text checked at
    the input boundary (the body may hold line breaks)."""
    settings = runtime.settings
    text_limit = settings.message_max_chars * 4 + 1024
    body = await read_bounded(request, settings.attachment_max_bytes + text_limit, "upload")
    form = await parse_form(
        request, body, multiline=("body",), max_files=1, max_fields=4, max_part_size=text_limit
    )
    text = form.get("body")
    upload = form.get("file")
    has_file = isinstance(upload, UploadFile) and bool(upload.filename)
    return (text if isinstance(text, str) else ""), (
        upload if has_file and isinstance(upload, UploadFile) else None
    )


async def reply(request: Request) -> Response:
    _, patient_id = await require_patient(request)
    runtime = _runtime(request)
    thread_id = str(request.path_params["thread_id"])
    text, upload = await _reply_form(request, runtime)
    content = await upload.read() if upload is not None else None
    filename = (upload.filename or "") if upload is not None else ""
    text = text.replace("\r\n", "\n")

    def work(db: Session, actor: Actor) -> int:
        if content is None:
            message = threads.post_message(
                db, runtime.keyring, runtime.settings, actor, thread_id, body=text
            )
        else:
            message, _ = threads.post_attachment(
                db,
                runtime.keyring,
                runtime.settings,
                actor,
                thread_id,
                filename=filename,
                content=content,
                body=text,
            )
        return message.seq

    action = "messaging.message.post" if content is None else "messaging.attachment.upload"
    try:
        seq = await run_in_threadpool(
            perform,
            runtime,
            Caller.of_patient(patient_id),
            action=action,
            target=thread_target(thread_id),
            request_id=_request_id(request),
            work=work,
        )
    except RefusedError as exc:
        if exc.status in (404, 410):
            raise Problem(exc.status, exc.detail) from None
        return await _show_thread(
            request, patient_id, thread_id, error=exc.detail, draft=text, status_code=exc.status
        )
    return RedirectResponse(f"/messages/{thread_id}?sent=1#message-{seq}", status_code=303)


async def _new_form(
    request: Request,
    patient_id: str,
    *,
    error: str | None = None,
    fields: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    runtime = _runtime(request)
    teams = await _run(
        request,
        Caller.of_patient(patient_id),
        "messaging.care_team.list",
        "care_teams",
        threads.teams_for_patient,
    )
    given = fields or {}
    context = {
        **_thread_context(runtime),
        "teams": teams,
        "error": error,
        "max_subject": threads.MAX_SUBJECT,
        "chosen": given.get("topic", ""),
        "subject": given.get("subject", ""),
        "draft": given.get("body", ""),
    }
    return templates.TemplateResponse(
        request, "messaging/new.html", context, status_code=status_code
    )


async def new_page(request: Request) -> Response:
    """A patient writes first: to one of their care teams, on a topic it offers."""
    _, patient_id = await require_patient(request)
    return await _new_form(request, patient_id)


async def new_post(request: Request) -> Response:
    _, patient_id = await require_patient(request)
    runtime = _runtime(request)
    settings = runtime.settings
    text_limit = settings.message_max_chars * 4 + 1024
    raw = await read_bounded(request, settings.attachment_max_bytes + text_limit, "upload")
    form = await parse_form(
        request, raw, multiline=("body",), max_files=1, max_fields=6, max_part_size=text_limit
    )
    fields = {
        name: value
        for name in ("topic", "subject", "body")
        if isinstance(value := form.get(name), str)
    }
    fields["body"] = fields.get("body", "").replace("\r\n", "\n")
    team_id, _, topic_id = fields.get("topic", "").partition(":")
    upload = form.get("file")
    has_file = isinstance(upload, UploadFile) and bool(upload.filename)
    content = await upload.read() if has_file and isinstance(upload, UploadFile) else None
    filename = (upload.filename or "") if isinstance(upload, UploadFile) else ""

    def work(db: Session, actor: Actor) -> str:
        thread, _ = threads.start_by_patient(
            db,
            runtime.keyring,
            settings,
            actor,
            care_team_id=team_id,
            topic_id=topic_id,
            subject=fields.get("subject", ""),
            body=fields["body"],
        )
        if content is not None:
            threads.post_attachment(
                db, runtime.keyring, settings, actor, thread.id, filename=filename, content=content
            )
        return thread.id

    try:
        thread_id = await run_in_threadpool(
            perform,
            runtime,
            Caller.of_patient(patient_id),
            action="messaging.thread.create",
            target="threads",
            request_id=_request_id(request),
            work=work,
        )
    except RefusedError as exc:
        # A friendly page with what they wrote kept, whatever the refusal.
        return await _new_form(
            request, patient_id, error=exc.detail, fields=fields, status_code=exc.status
        )
    return RedirectResponse(f"/messages/{thread_id}?sent=1", status_code=303)


async def download(request: Request) -> Response:
    _, patient_id = await require_patient(request)
    runtime = _runtime(request)
    thread_id = str(request.path_params["thread_id"])
    attachment_id = str(request.path_params["attachment_id"])
    found = await _run(
        request,
        Caller.of_patient(patient_id),
        "messaging.attachment.download",
        thread_target(thread_id),
        lambda db, actor: threads.download(db, runtime.keyring, actor, thread_id, attachment_id),
    )
    return attachment_response(found)


async def export_page(request: Request) -> Response:
    # Every message at once: a sensitive operation, behind a step-up (a second factor
    # proved in the last few minutes), like the account's other sensitive changes.
    _, patient_id = await require_patient(request, step_up=True)
    runtime = _runtime(request)
    archive = await _run(
        request,
        Caller.of_patient(patient_id),
        "messaging.export",
        "threads",
        lambda db, actor: export.build(db, runtime.keyring, actor),
    )
    return export.response(archive)


def routes() -> list[BaseRoute]:
    return [
        Route("/messages", inbox, methods=["GET"], name="messages"),
        Route("/messages/export", export_page, methods=["GET"]),
        Route("/messages/new", new_page, methods=["GET"]),
        Route("/messages/new", new_post, methods=["POST"]),
        Route("/messages/{thread_id}", thread_page, methods=["GET"], name="message_thread"),
        Route("/messages/{thread_id}/reply", reply, methods=["POST"]),
        Route("/messages/{thread_id}/attachments/{attachment_id}", download, methods=["GET"]),
    ]
