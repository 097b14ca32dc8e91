"""Signing in through an upstream provider, linking one to an account, and unlinking.

- ``GET /signin/upstream/{name}`` starts a round trip (at most 30 per client address
  before delays, :data:`identity.throttle.UPSTREAM_START_ADDRESS`); ``…/callback``
  finishes it. A known
  (issuer, subject) signs in to its account (first factor; the usual second-factor steps
  follow). An unknown one creates a new account silently: never linked by email.
- Linking starts from ``/account/methods`` (a POST, with a sign-in in the last five
  minutes) and finishes at the same callback, into the account that started it.
- Unlinking (page and API) never removes the last way to sign in, and only the account's
  own links.

Everything that goes wrong upstream or with the state changes nothing and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.http import csrf, openapi
from carebridge.http.forms import read_form
from carebridge.http.problems import Problem
from carebridge.http.templates import templates_for
from carebridge.i18n import N_, _
from carebridge.runtime import Runtime
from carebridge.settings import UpstreamProvider
from identity import authn, notices, sessions, throttle
from identity.credentials import upstream
from identity.interfaces import EmailSender
from identity.models import (
    Account,
    AuthSession,
    PasswordCredential,
    UpstreamIdentity,
    new_id,
)
from identity.notices import Notice

log = logging.getLogger("carebridge.identity.upstream")
templates = templates_for(Path(__file__).resolve().parent.parent / "templates")

METHODS_PATH = "/account/methods"
_DONE = {
    "linked": N_("The account is linked. You can now sign in with it."),
    "already-linked": N_("That account was already linked."),
    "unlinked": N_("The account is unlinked. You can no longer sign in with it."),
}


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _provider(request: Request) -> UpstreamProvider:
    provider = upstream.get(_runtime(request), request.path_params["name"])
    if provider is None:
        raise HTTPException(404)
    return provider


def _record(request: Request, *, actor: str, action: str, outcome: Outcome, target: str) -> None:
    """An audit record in a transaction of its own (for attempts that changed nothing)."""
    runtime = _runtime(request)
    with runtime.sessions.begin() as db:
        audit.append(
            db,
            actor=actor,
            action=action,
            outcome=outcome,
            target=target,
            request_id=request.state.request_id,
        )


def buttons(runtime: Runtime, next_path: str | None = None) -> list[dict[str, str]]:
    """ "Sign in with …" buttons for the sign-in page: a label and a start URL for each."""
    query = f"?{urlencode({'next': authn.safe_next(next_path)})}" if next_path else ""
    return [
        {
            "name": p.name,
            "label": _("Sign in with %(provider)s") % {"provider": p.display_name},
            "url": f"/signin/upstream/{p.name}{query}",
        }
        for p in upstream.providers(runtime)
    ]


# Pages for what went wrong

_TROUBLE: dict[str, tuple[int, str, str]] = {
    "state": (
        400,
        N_("This sign-in link has expired or was already used"),
        N_(
            "Sign-in links work once, for 10 minutes, in the browser that started them. "
            "Nothing was changed. Please start again."
        ),
    ),
    "unavailable": (
        502,
        N_("We couldn't reach {provider}"),
        N_(
            "{provider} didn't answer in time. Nothing was changed. Please try again in a few "
            "minutes, or sign in another way."
        ),
    ),
    "refused": (
        400,
        N_("Signing in with {provider} didn't finish"),
        N_("{provider} did not confirm who you are (perhaps you cancelled). Nothing was changed."),
    ),
    "invalid_token": (
        400,
        N_("We couldn't verify {provider}'s answer"),
        N_(
            "The answer from {provider} failed our security checks. Nothing was changed. "
            "Please try again."
        ),
    ),
    "linked_elsewhere": (
        409,
        N_("This {provider} account belongs to another carebridge account"),
        N_(
            "It is linked to a different carebridge account, so it can't be linked to this one. "
            "Nothing was changed."
        ),
    ),
    "not_signed_in": (
        403,
        N_("Please sign in again to link {provider}"),
        N_("Linking needs the account that started it to be signed in. Nothing was changed."),
    ),
    "throttled": (
        429,
        N_("Too many sign-ins started"),
        N_(
            "Too many sign-ins with {provider} were started from your network. Nothing was "
            "changed. Please wait a few minutes, then try again."
        ),
    ),
    "disabled": (
        403,
        N_("You can't sign in with this account"),
        N_("This account is disabled. Please contact support."),
    ),
}


def trouble(
    request: Request, kind: str, provider: UpstreamProvider, *, linking: bool = False
) -> Response:
    """A page saying what went wrong, that nothing changed, and where to go next."""
    status, heading, message = _TROUBLE[kind]
    name = provider.display_name
    retry = METHODS_PATH if linking else f"/signin/upstream/{provider.name}"
    return templates.TemplateResponse(
        request,
        "identity/upstream_trouble.html",
        {
            "heading": _(heading).format(provider=name),
            "message": _(message).format(provider=name),
            "retry": retry if kind != "disabled" else None,
            "linking": linking,
            "request_id": getattr(request.state, "request_id", None),
        },
        status_code=status,
    )


# Starting a round trip


async def _to_provider(
    request: Request,
    provider: UpstreamProvider,
    *,
    next_path: str,
    link_account: str | None,
    action: str,
    actor: str,
) -> Response:
    runtime = _runtime(request)
    try:
        url = await upstream.begin(
            runtime,
            provider,
            browser=csrf.token(request),
            next_path=next_path,
            link_account=link_account,
        )
    except upstream.UnavailableError as exc:
        log.warning("upstream provider unavailable: %s", exc)
        await run_in_threadpool(
            _record,
            request,
            actor=actor,
            action=action,
            outcome=Outcome.FAILED,
            target=f"provider:{provider.name}",
        )
        return trouble(request, "unavailable", provider, linking=link_account is not None)
    return RedirectResponse(url, status_code=303)


def _count_start(request: Request) -> bool:
    """Count a started sign-in against the client's address; False (audited): too many."""
    runtime = _runtime(request)
    host = request.client.host if request.client else None
    limit = throttle.address_limit(runtime.keyring, host, throttle.UPSTREAM_START_ADDRESS)
    with runtime.sessions.begin() as db:
        counts = throttle.store_for(runtime.settings).attempt(db, [limit], throttle.utcnow())
        if counts is None:
            audit.append(
                db,
                actor="anonymous",
                action="identity.signin.upstream",
                outcome=Outcome.DENIED,
                target=limit.key,
                request_id=request.state.request_id,
            )
    return counts is not None


async def start(request: Request) -> Response:
    provider = _provider(request)
    if not await run_in_threadpool(_count_start, request):
        return trouble(request, "throttled", provider)
    next_path = authn.safe_next(request.query_params.get("next"))
    return await _to_provider(
        request,
        provider,
        next_path=next_path,
        link_account=None,
        action="identity.signin.upstream",
        actor="anonymous",
    )


# Finishing it


class CallbackQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    state: str = Field(min_length=1, max_length=512)
    code: str | None = Field(default=None, min_length=1, max_length=4096)
    error: str | None = Field(default=None, max_length=200)
    iss: str | None = Field(default=None, max_length=500)


@dataclass(frozen=True)
class Completed:
    outcome: Literal[
        "signed_in", "linked", "already_linked", "linked_elsewhere", "not_signed_in", "disabled"
    ]
    location: str = ""
    token: str | None = None


def _find_link(db: Session, identity: upstream.Identity) -> UpstreamIdentity | None:
    return db.scalars(
        select(UpstreamIdentity).where(
            UpstreamIdentity.issuer == identity.issuer,
            UpstreamIdentity.subject == identity.subject,
        )
    ).one_or_none()


def _new_link(
    db: Session, provider: UpstreamProvider, identity: upstream.Identity, account_id: str
) -> UpstreamIdentity | None:
    """Insert a link (and its account, when new); None if a concurrent request linked the
    same (issuer, subject) first, in which case nothing was inserted."""
    link = UpstreamIdentity(
        id=new_id("upi"),
        account_id=account_id,
        provider=provider.name,
        issuer=identity.issuer,
        subject=identity.subject,
        linked_at=datetime.now(UTC),
    )
    try:
        with db.begin_nested():
            if db.get(Account, account_id) is None:
                db.add(Account(id=account_id, created_at=link.linked_at, status="active"))
            db.add(link)
    except IntegrityError:
        return None
    return link


@dataclass(frozen=True)
class _Context:
    db: Session
    runtime: Runtime
    provider: UpstreamProvider
    identity: upstream.Identity
    login: upstream.LoginState
    current: AuthSession | None
    request_id: str | None
    email: EmailSender | None = None

    def record(self, actor: str, action: str, outcome: Outcome, target: str) -> None:
        audit.append(
            self.db,
            actor=actor,
            action=action,
            outcome=outcome,
            target=target,
            request_id=self.request_id,
        )


def complete(
    db: Session,
    runtime: Runtime,
    *,
    provider: UpstreamProvider,
    identity: upstream.Identity,
    login: upstream.LoginState,
    session_token: str | None,
    user_agent: str,
    request_id: str | None,
    email: EmailSender | None = None,
) -> Completed:
    """Sign in, create or link, once the provider has said who signed in; a link made
    sends its owner a notice through ``email``."""
    if login.link_account is not None:
        current = sessions.load(db, runtime, session_token) if session_token else None
        context = _Context(db, runtime, provider, identity, login, current, request_id, email)
        return _link(context, login.link_account)
    # Signing in reads the browser's session only under the account's session lock.
    context = _Context(db, runtime, provider, identity, login, None, request_id, email)
    return _sign_in(context, user_agent, session_token)


def _link(context: _Context, account_id: str) -> Completed:
    db, current = context.db, context.current
    actor, action = f"account:{account_id}", "identity.upstream.link"
    signed_in = (
        current is not None
        and current.account_id == account_id
        and authn.next_step(db, context.runtime, current) is authn.Step.DONE
    )
    if not signed_in:
        context.record(actor, action, Outcome.DENIED, f"provider:{context.provider.name}")
        return Completed("not_signed_in")
    link = _find_link(db, context.identity)
    if link is None:
        link = _new_link(db, context.provider, context.identity, account_id)
        if link is not None:
            context.record(actor, action, Outcome.ALLOWED, f"upstream:{link.id}")
            if context.email is not None:
                notices.send(
                    db, context.runtime, context.email, account_id, Notice.SIGN_IN_METHOD_LINKED
                )
            return Completed("linked", f"{METHODS_PATH}?done=linked")
        link = _find_link(db, context.identity)  # linked by a concurrent request
    if link is not None and link.account_id == account_id:
        return Completed("already_linked", f"{METHODS_PATH}?done=already-linked")
    context.record(actor, action, Outcome.DENIED, f"upstream:{link.id if link else '?'}")
    return Completed("linked_elsewhere")


def _sign_in(context: _Context, user_agent: str, session_token: str | None) -> Completed:
    db, runtime = context.db, context.runtime
    link = _find_link(db, context.identity)
    if link is None:
        link = _new_link(db, context.provider, context.identity, new_id("acc"))
        if link is None:  # created by a concurrent request a moment ago: sign in to it
            link = _find_link(db, context.identity)
            assert link is not None  # noqa: S101  (the unique constraint said it exists)
        else:
            context.record(
                f"account:{link.account_id}",
                "identity.signup.upstream",
                Outcome.ALLOWED,
                f"upstream:{link.id}",
            )
    actor, action, target = f"account:{link.account_id}", "identity.signin.upstream", link.id
    # The session lock before the browser's session is read or anything is written
    # (identity.sessions); the status read under it is current.
    lock = sessions.lock_account_sessions(db, link.account_id)
    if lock is None or lock.status == "disabled":
        context.record(actor, action, Outcome.DENIED, f"upstream:{target}")
        return Completed("disabled")
    current = sessions.load(db, runtime, session_token) if session_token else None
    if current is not None and current.account_id == lock.account_id:
        # Signing in again as the same person: re-authentication; the level is kept.
        level, replacing = max(current.level, sessions.FIRST_FACTOR), current
    else:
        if current is not None:  # someone else was signed in in this browser
            sessions.end(db, current)
            db.flush()
        level, replacing = sessions.FIRST_FACTOR, None
    started = sessions.start(
        db,
        runtime,
        lock,
        level=level,
        first_factor=sessions.upstream(context.provider.name),
        user_agent=user_agent,
        replacing=replacing,
    )
    context.record(actor, action, Outcome.ALLOWED, f"upstream:{target}")
    step = authn.next_step(db, runtime, started.session)
    location = context.login.next
    if step is not authn.Step.DONE:
        location = f"{step.value}?{urlencode({'next': location})}"
    return Completed("signed_in", location, started.token)


def _consume(request: Request, provider: UpstreamProvider) -> upstream.LoginState | None:
    """The callback's round trip, or None (audited) when its state is no good."""
    runtime = _runtime(request)
    state = request.query_params.get("state", "")
    with runtime.sessions.begin() as db:
        try:
            if not 0 < len(state) <= 512:
                raise upstream.InvalidStateError("no usable state")
            return upstream.consume_state(
                db, runtime, provider=provider.name, state=state, browser=csrf.token(request)
            )
        except upstream.InvalidStateError as exc:
            log.info("upstream callback refused: %s", exc)
            audit.append(
                db,
                actor="anonymous",
                action="identity.signin.upstream",
                outcome=Outcome.DENIED,
                target=f"provider:{provider.name}",
                request_id=request.state.request_id,
            )
            return None


async def _identity(
    request: Request, provider: UpstreamProvider, login: upstream.LoginState
) -> upstream.Identity | Response:
    """Who the provider says signed in, or the page saying why we don't know."""
    kind, outcome, reason = "refused", Outcome.FAILED, "no code"
    try:
        query = CallbackQuery.model_validate(dict(request.query_params))
        if query.error is None and query.code is not None:
            return await upstream.finish(
                _runtime(request), provider, login, code=query.code, iss=query.iss
            )
        reason = f"the provider answered an error ({query.error})"
    except ValidationError:
        reason = "malformed callback"
    except upstream.UnavailableError as exc:
        kind, reason = "unavailable", str(exc)
    except upstream.RefusedError as exc:
        reason = str(exc)
    except upstream.InvalidIdTokenError as exc:
        kind, outcome, reason = "invalid_token", Outcome.DENIED, str(exc)
    log.warning("upstream sign-in with %s failed: %s", provider.name, reason)
    await run_in_threadpool(
        _record,
        request,
        actor=f"account:{login.link_account}" if login.link_account else "anonymous",
        action="identity.upstream.link" if login.link_account else "identity.signin.upstream",
        outcome=outcome,
        target=f"provider:{provider.name}",
    )
    return trouble(request, kind, provider, linking=login.link_account is not None)


async def callback(request: Request) -> Response:
    runtime = _runtime(request)
    provider = _provider(request)
    login = await run_in_threadpool(_consume, request, provider)
    if login is None:
        return trouble(request, "state", provider)
    identity = await _identity(request, provider, login)
    if isinstance(identity, Response):
        return identity

    def finish() -> Completed:
        with runtime.sessions.begin() as db:
            return complete(
                db,
                runtime,
                provider=provider,
                identity=identity,
                login=login,
                session_token=sessions.presented_token(request),
                user_agent=sessions.user_agent(request),
                request_id=request.state.request_id,
                email=request.app.state.outward.email,
            )

    done = await run_in_threadpool(finish)
    if not done.location:
        return trouble(request, done.outcome, provider, linking=login.link_account is not None)
    response = RedirectResponse(done.location, status_code=303)
    if done.token is not None:
        sessions.set_cookie(response, runtime, done.token)
    return response


# The account's ways to sign in


@openapi.component
class UpstreamLink(BaseModel):
    id: str
    provider: str
    display_name: str
    linked_at: datetime


@openapi.component
class SignInMethods(BaseModel):
    password: bool = Field(description="Whether the account has a password")
    upstream: list[UpstreamLink] = Field(description="Linked upstream providers")

    @property
    def count(self) -> int:
        return int(self.password) + len(self.upstream)


def methods_of(db: Session, runtime: Runtime, account_id: str) -> SignInMethods:
    names = {p.name: p.display_name for p in upstream.providers(runtime)}
    links = db.scalars(
        select(UpstreamIdentity)
        .where(UpstreamIdentity.account_id == account_id)
        .order_by(UpstreamIdentity.linked_at)
    )
    return SignInMethods(
        password=db.get(PasswordCredential, account_id) is not None,
        upstream=[
            UpstreamLink(
                id=link.id,
                provider=link.provider,
                display_name=names.get(link.provider, link.provider),
                linked_at=link.linked_at,
            )
            for link in links
        ],
    )


def unlink(
    db: Session,
    current: AuthSession,
    *,
    link_id: str,
    request_id: str | None,
    step_up: authn.StepUp = authn.StepUp.DONE,
) -> Literal["unlinked", "not_found", "last_method", "step_up"]:
    """Remove one of the account's own links, unless it is the last way to sign in or
    the session is not stepped up (``step_up``, as the caller found it); the account's
    other sessions end (whoever signed in with that link is signed out)."""
    account_id = current.account_id
    # Serialize changes to one account's methods, so two unlinks can't both pass the
    # count; it ends the other sessions too: the session lock is the one to take.
    lock = sessions.lock_account_sessions(db, account_id)
    link = db.scalars(
        select(UpstreamIdentity).where(
            UpstreamIdentity.id == link_id, UpstreamIdentity.account_id == account_id
        )
    ).one_or_none()
    links = (
        db.scalar(
            select(func.count())
            .select_from(UpstreamIdentity)
            .where(UpstreamIdentity.account_id == account_id)
        )
        or 0
    )
    has_password = db.get(PasswordCredential, account_id) is not None
    outcome: Literal["unlinked", "not_found", "last_method", "step_up"] = "unlinked"
    if link is None:
        outcome = "not_found"
    elif links + int(has_password) <= 1:
        outcome = "last_method"
    elif step_up is not authn.StepUp.DONE:
        outcome = "step_up"
    else:
        db.delete(link)
    audit.append(
        db,
        actor=f"account:{account_id}",
        action="identity.upstream.unlink",
        outcome=Outcome.ALLOWED if outcome == "unlinked" else Outcome.DENIED,
        target=f"upstream:{link_id}",
        request_id=request_id,
    )
    if outcome == "unlinked" and lock is not None:
        sessions.revoke_others(db, lock, current, request_id=request_id)
    return outcome


_UNLINK_REFUSED = {
    "last_method": (
        409,
        N_(
            "This is your only way to sign in, so it can't be unlinked. Set a password or link "
            "another account first."
        ),
    ),
}


async def _methods_page(
    request: Request, session: Any, *, errors: dict[str, str] | None = None, status: int = 200
) -> Response:
    runtime = _runtime(request)

    def load() -> SignInMethods:
        with runtime.sessions() as db:
            return methods_of(db, runtime, session.account_id)

    def stepping_up() -> authn.StepUp:
        with runtime.sessions() as db:
            return authn.step_up_of(db, runtime, session)

    methods = await run_in_threadpool(load)
    step_up = await run_in_threadpool(stepping_up)
    return templates.TemplateResponse(
        request,
        "identity/methods.html",
        {
            "methods": methods,
            "can_unlink": methods.count > 1,
            "providers": upstream.providers(runtime),
            "step_up": step_up.value,
            "done": _DONE.get(request.query_params.get("done", "")),
            "errors": errors or {},
        },
        status_code=status,
    )


async def methods_page(request: Request) -> Response:
    session = await authn.require(request)
    return await _methods_page(request, session)


class LinkForm(BaseModel):
    provider: str = Field(min_length=1, max_length=64)


async def link_start(request: Request) -> Response:
    session = await authn.require(request)
    form = await read_form(request)
    try:
        parsed = LinkForm.model_validate({"provider": form.get("provider")})
    except ValidationError:
        raise HTTPException(400) from None
    provider = upstream.get(_runtime(request), parsed.provider)
    if provider is None:
        raise HTTPException(404)
    await authn.require_step_up(request, session, next_path=METHODS_PATH)
    return await _to_provider(
        request,
        provider,
        next_path=METHODS_PATH,
        link_account=session.account_id,
        action="identity.upstream.link",
        actor=f"account:{session.account_id}",
    )


class UnlinkForm(BaseModel):
    id: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")


async def _unlink(request: Request, session: Any, link_id: str) -> str:
    runtime = _runtime(request)

    def stepping_up() -> authn.StepUp:
        with runtime.sessions() as db:
            return authn.step_up_of(db, runtime, session)

    step = await run_in_threadpool(stepping_up)

    def act() -> str:
        with runtime.sessions.begin() as db:
            return unlink(
                db,
                session,
                link_id=link_id,
                request_id=request.state.request_id,
                step_up=step,
            )

    outcome = await run_in_threadpool(act)
    if outcome == "step_up":
        raise authn.step_up_needed(request, step, METHODS_PATH)
    return outcome


async def unlink_page(request: Request) -> Response:
    session = await authn.require(request)
    form = await read_form(request)
    try:
        parsed = UnlinkForm.model_validate({"id": form.get("id")})
    except ValidationError:
        raise HTTPException(404) from None
    outcome = await _unlink(request, session, parsed.id)
    if outcome == "unlinked":
        return RedirectResponse(f"{METHODS_PATH}?done=unlinked", status_code=303)
    if outcome == "not_found":
        raise HTTPException(404)
    status, message = _UNLINK_REFUSED[outcome]
    return await _methods_page(request, session, errors={"form": message}, status=status)


# JSON API


@openapi.operation(
    answers={200: openapi.Json(SignInMethods, "The account's password and linked providers")},
    security=openapi.session(),
    tags=("account",),
)
async def methods_api(request: Request) -> Response:
    """List the ways to sign in

    - 401: Not signed in
    """
    session = await authn.require(request)
    runtime = _runtime(request)

    def load() -> SignInMethods:
        with runtime.sessions() as db:
            return methods_of(db, runtime, session.account_id)

    methods = await run_in_threadpool(load)
    return JSONResponse(methods.model_dump(mode="json"))


@openapi.operation(
    answers={204: openapi.Empty("Unlinked")},
    security=openapi.session(),
    problems=(403, 404, 409),
    tags=("account",),
)
async def unlink_api(request: Request) -> Response:
    """Unlink an upstream provider

    - 401: Not signed in
    - 403: Step-up needed: POST /api/v1/reauth with a second factor first
    - 404: No such link on this account
    - 409: It is the last way to sign in
    """
    session = await authn.require(request)
    try:
        parsed = UnlinkForm.model_validate({"id": request.path_params["id"]})
    except ValidationError:
        raise Problem(404, "No such linked account.") from None
    outcome = await _unlink(request, session, parsed.id)
    if outcome == "unlinked":
        return Response(status_code=204)
    if outcome == "not_found":
        raise Problem(404, "No such linked account.")
    status, message = _UNLINK_REFUSED[outcome]
    raise Problem(status, message)


def routes() -> list[BaseRoute]:
    return [
        Route("/signin/upstream/{name}", start, methods=["GET"], name="upstream_start"),
        Route("/signin/upstream/{name}/callback", callback, methods=["GET"]),
        Route(METHODS_PATH, methods_page, methods=["GET"], name="account_methods"),
        Route(f"{METHODS_PATH}/link", link_start, methods=["POST"]),
        Route(f"{METHODS_PATH}/unlink", unlink_page, methods=["POST"]),
        Route("/api/v1/account/methods", methods_api, methods=["GET"]),
        Route("/api/v1/account/methods/{id}", unlink_api, methods=["DELETE"]),
    ]
