"""Secure links: ``/l/{token}`` in an SMS leads to sign-in and then to the thread.

- The token is 128 random bits, stored as a keyed hash, bound to one patient and one
  thread, and expires (72 hours by default).
- Opening it shows nothing: ``GET /l/{token}`` records a *visit* behind a short-lived,
  HttpOnly cookie and redirects to ``/l``, so the token leaves the address bar (and the
  history entry the user returns to). That response carries ``Referrer-Policy:
  no-referrer``; the pages after it never had the token in their URL.
- ``GET /l`` needs a signed-in, MFA-complete session (identity redirects to sign-in and
  back). Signed in as the link's patient: on to ``/messages/{thread_id}``. Anyone else,
  an unknown or expired link or visit: one generic page, the same in every case.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge.db import transaction
from carebridge.http import cookies
from carebridge.keyring import Keyring
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity.interfaces import patient_id_of, require_account
from sms.models import LinkVisit, SecureLink
from sms.pages import render

VISIT_TTL = timedelta(minutes=30)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{22,64}")


def _token_hash(keyring: Keyring, token: str) -> str:
    return keyring.lookup_hash("sms-link", token)


def create(
    db: Session,
    runtime: Runtime,
    *,
    patient_id: str,
    thread_id: str,
    notification_id: str | None,
    now: datetime,
) -> str:
    """A new link in the caller's transaction; returns its URL (the token only lives there)."""
    token = secrets.token_urlsafe(16)  # 128 bits
    db.add(
        SecureLink(
            id=f"lnk_{secrets.token_urlsafe(16)}",
            token_hash=_token_hash(runtime.keyring, token),
            patient_id=patient_id,
            thread_id=thread_id,
            notification_id=notification_id,
            created_at=now,
            expires_at=now + timedelta(hours=runtime.settings.sms_link_hours),
        )
    )
    return f"{runtime.settings.effective_public_base_url}/l/{token}"


def cookie_name(runtime: Runtime) -> str:
    # Not __Host-: that prefix demands Path=/, and this cookie is for /l only.
    return cookies.SMS_LINK_VISIT.name(runtime.settings.issuer_is_https)


def start_visit(runtime: Runtime, token: str) -> str | None:
    """A visit for a live link (its cookie value), or None for anything else."""
    if not _TOKEN.fullmatch(token):
        return None
    now = utcnow()
    with transaction(runtime.sessions) as db:
        query = select(SecureLink).where(
            SecureLink.token_hash == _token_hash(runtime.keyring, token)
        )
        link = db.execute(query).scalar_one_or_none()
        if link is None or (link.expires_at or now) <= now:
            return None
        value = secrets.token_urlsafe(32)
        db.add(
            LinkVisit(
                id=f"lv_{secrets.token_urlsafe(16)}",
                cookie_hash=runtime.keyring.lookup_hash("sms-link-visit", value),
                link_id=link.id,
                expires_at=min(now + VISIT_TTL, link.expires_at or now),
            )
        )
    return value


def finish_visit(runtime: Runtime, cookie: str, account_id: str) -> str | None:
    """The thread to open if the visit is live and the account is the link's patient."""
    now = utcnow()
    with transaction(runtime.sessions) as db:
        query = select(LinkVisit, SecureLink).join(SecureLink, LinkVisit.link_id == SecureLink.id)
        query = query.where(
            LinkVisit.cookie_hash == runtime.keyring.lookup_hash("sms-link-visit", cookie)
        )
        row = db.execute(query).one_or_none()
        if row is None:
            return None
        visit, link = row
        live = (visit.expires_at or now) > now and (link.expires_at or now) > now
        patient_id = patient_id_of(db, account_id)
        if (
            not live
            or patient_id is None
            or not secrets.compare_digest(patient_id, link.patient_id)
        ):
            return None
        db.delete(visit)  # used up: the cookie opens the thread once
        thread_id: str = link.thread_id
        return thread_id


def purge(runtime: Runtime) -> None:
    """Drop expired links and visits (worker job)."""
    now = utcnow()
    with transaction(runtime.sessions) as db:
        db.execute(delete(LinkVisit).where(LinkVisit.expires_at < now))
        db.execute(delete(SecureLink).where(SecureLink.expires_at < now))


# Pages


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _generic(request: Request) -> Response:
    response = render(request, "link_unavailable.html", {}, status_code=404)
    response.delete_cookie(cookie_name(_runtime(request)), path="/l")
    return response


async def open_link(request: Request) -> Response:
    runtime = _runtime(request)
    token = str(request.path_params["token"])
    # The access log writes the request's path when the response is done: let it see
    # the route's template, not the token (the scope is shared with the middleware).
    request.scope["path"] = "/l/{token}"
    value = await run_in_threadpool(start_visit, runtime, token)
    response = RedirectResponse("/l", status_code=303)
    # The token is in this request's URL: no Referer may carry it anywhere.
    response.headers["referrer-policy"] = "no-referrer"
    if value is None:
        response.delete_cookie(cookie_name(runtime), path="/l")
    else:
        response.set_cookie(
            cookie_name(runtime),
            value,
            max_age=int(VISIT_TTL.total_seconds()),
            path="/l",
            httponly=True,
            samesite="lax",
            secure=runtime.settings.issuer_is_https,
        )
    return response


async def continue_link(request: Request) -> Response:
    runtime = _runtime(request)
    cookie = request.cookies.get(cookie_name(runtime), "")
    if not cookie:
        return _generic(request)
    account_id = await require_account(request)  # not signed in: to sign-in (and MFA), then back
    thread_id = await run_in_threadpool(finish_visit, runtime, cookie, account_id)
    if thread_id is None:
        return _generic(request)
    target = f"/messages/{thread_id}" if thread_id else "/messages"
    response = RedirectResponse(target, status_code=303)
    response.delete_cookie(cookie_name(runtime), path="/l")
    return response


def routes() -> list[BaseRoute]:
    return [
        Route("/l", continue_link, methods=["GET"], name="sms_link_continue"),
        Route("/l/{token}", open_link, methods=["GET"], name="sms_link_open"),
    ]
