"""Deleting the account: by its owner (``/account/delete``, ``DELETE /api/v1/account``),
or for an erasure request made to the organization (:func:`erase`: the admin API in
identity/flows/admin.py and ``carebridge accounts delete``).

The owner needs a step-up (the second factor proved in the last few minutes). The page
says plainly what goes and what the care record keeps (identity/deletion.py does it).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from carebridge.db import transaction
from carebridge.http import openapi
from carebridge.http.forms import read_form
from carebridge.http.problems import Problem
from carebridge.i18n import N_
from carebridge.runtime import Runtime
from identity import authn, deletion, sessions
from identity.flows import mfa
from identity.interfaces import Outward
from identity.models import AuthSession
from identity.roster import staff

PATH = "/account/delete"
ERASURE = "identity.account.erasure"
CONFIRM = N_("Tick the box to confirm that you want to delete your account.")


class StepUpError(Exception):
    """The session is not (or no longer) stepped up; ``step`` says what it needs."""

    def __init__(self, step: authn.StepUp) -> None:
        super().__init__(step.value)
        self.step = step


def delete_own(
    runtime: Runtime, outward: Outward, session: AuthSession, *, request_id: str | None
) -> deletion.Deleted | None:
    """The owner deletes their account (None: the session ended meanwhile)."""
    with transaction(runtime.sessions) as db:
        # The session lock before the session is checked: one ended by a reset or a sign
        # out everywhere committed first is gone here (deletion takes it again: a no-op).
        if sessions.lock_account_sessions(db, session.account_id) is None:
            return None
        current = db.get(AuthSession, session.token_hash)
        if current is None:
            return None
        step = authn.step_up_of(db, runtime, current)
        if step is not authn.StepUp.DONE:
            raise StepUpError(step)
        actor = f"account:{current.account_id}"
        db.expunge(current)
        return deletion.delete_account(
            db, runtime, outward, current.account_id, actor=actor, request_id=request_id
        )


def erase(
    runtime: Runtime,
    outward: Outward,
    account_id: str,
    *,
    reason: str,
    actor: str,
    request_id: str | None = None,
) -> deletion.Deleted:
    """An erasure request made to the organization: the same deletion, with the
    operator's stated reason kept (``staff_action``) and audited. Raises
    :class:`staff.NotFoundError` if there is no such account."""
    reason = staff.check_reason(reason)
    with transaction(runtime.sessions) as db:
        deleted = deletion.delete_account(
            db, runtime, outward, account_id, actor=actor, request_id=request_id
        )
        if deleted is None:
            raise staff.NotFoundError("no account has this ID")
        staff.record(
            db,
            actor=actor,
            action=ERASURE,
            reason=reason,
            patient_id=deleted.patient_id,
            account_id=account_id,
        )
    return deleted


# Pages


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _render(
    request: Request, name: str, errors: dict[str, str], status_code: int = 200
) -> Response:
    return mfa.templates.TemplateResponse(
        request, f"identity/{name}", {"errors": errors}, status_code=status_code
    )


async def _delete(request: Request, session: AuthSession) -> deletion.Deleted | None:
    return await run_in_threadpool(
        lambda: delete_own(
            _runtime(request),
            request.app.state.outward,
            session,
            request_id=getattr(request.state, "request_id", None),
        )
    )


async def page(request: Request) -> Response:
    session = await authn.require(request)
    await authn.require_step_up(request, session, next_path=PATH)
    return _render(request, "account_delete.html", {})


async def submit(request: Request) -> Response:
    session = await authn.require(request)
    form = await read_form(request)
    if form.get("confirm") != "yes":
        await authn.require_step_up(request, session, next_path=PATH)
        return _render(request, "account_delete.html", {"confirm": CONFIRM}, 400)
    try:
        deleted = await _delete(request, session)
    except StepUpError as exc:
        raise authn.step_up_needed(request, exc.step, PATH) from None
    if deleted is None:
        return mfa.signin_redirect(request)
    response = _render(request, "account_deleted.html", {})
    sessions.clear_cookie(response, _runtime(request))
    return response


# JSON API


@openapi.operation(
    answers={204: openapi.Empty("Deleted")},
    security=openapi.session(),
    problems=(403,),
    tags=("account",),
)
async def api_delete(request: Request) -> Response:
    """Delete the account

    Needs a step-up (POST /api/v1/reauth with an authenticator or recovery code in the
    last few minutes). Deletes the sign-in methods (login, password, authenticator,
    recovery codes, linked providers), every session (this one too), every app's grant
    and consent, the contact points and notification preferences, and the link to the
    patient ID. The messages stay with the care team under its retention and legal
    holds; the audit log stays. A notice goes to the verified address first.

    - 401: Not signed in
    - 403: Step-up needed
    """
    session = await authn.require(request)
    try:
        deleted = await _delete(request, session)
    except StepUpError as exc:
        raise authn.step_up_needed(request, exc.step) from None
    if deleted is None:
        raise Problem(401, "Sign in first.", headers={"WWW-Authenticate": "Bearer"})
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    return [
        Route(PATH, page, methods=["GET"], name="account_delete"),
        Route(PATH, submit, methods=["POST"]),
        Route("/api/v1/account", api_delete, methods=["DELETE"]),
    ]
