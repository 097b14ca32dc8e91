"""Who is asking, what they may reach, and the audit record of every attempt.

The contract (docs/architecture.md, "Care teams and staff"): a token whose client belongs
to care team T acts for T, as the app itself (client credentials) or as a staff account of
T (user-bound); any other token is a patient's, resolved from (client, sub) to account to
verified patient ID. A thread that is not the actor's answers exactly like a missing one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast
from weakref import WeakKeyDictionary

from cachetools import TTLCache
from sqlalchemy import ColumnElement, Table, bindparam, or_, select, true
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.http.bearer import AccessToken
from carebridge.i18n import N_
from carebridge.runtime import Runtime
from carebridge.utc import UtcDateTime, utcnow
from identity.interfaces import WithdrawnError, check_client_token, person_of_token
from messaging.crypto import ContentUnavailableError, KeyUnavailableError, ShreddedError
from messaging.models import (
    BreakGlassGrant,
    CareTeamClient,
    CareTeamPoolRole,
    CareTeamRole,
    CareTeamStaff,
    Thread,
)

log = logging.getLogger("carebridge.messaging")
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

THREAD_ID = re.compile(r"th_[A-Za-z0-9_-]{22}")
ATTACHMENT_ID = re.compile(r"att_[A-Za-z0-9_-]{22}")
_PARTICIPANT_PREFIX = {"patient": "patient", "staff": "account", "app": "app"}


@dataclass(frozen=True)
class Actor:
    kind: Literal["patient", "staff", "app"]
    id: str
    care_team_id: str | None = None
    # Staff only (messaging.roles): the pools their role works, None when it sees every
    # pool; the threads they broke the glass on, while the grant lasts; team admin or not.
    pools: frozenset[str] | None = None
    glass: frozenset[str] = frozenset()
    team_admin: bool = False

    @property
    def participant(self) -> str:
        """How read state and the audit log name this actor."""
        return f"{_PARTICIPANT_PREFIX[self.kind]}:{self.id}"

    @property
    def for_care_team(self) -> bool:
        return self.care_team_id is not None

    @property
    def side(self) -> str:
        """Which side of a thread the actor reads for (thread_read_state.participant): the
        patient's, or the care team's, whose staff read for all of it."""
        return "team" if self.for_care_team else "patient"

    @property
    def is_person(self) -> bool:
        """A person, whose reading counts; an app's own token (client credentials) reads
        for nobody, so it marks nothing read (issue 20)."""
        return self.kind != "app"


class RefusedError(Exception):
    """The request may not proceed; ``status`` and ``detail`` are safe to show.

    Audited as denied for 401 (a withdrawn token), 403, 404 and 410, or when ``denied``
    says so (a refusal by policy answered with another status); as failed otherwise (bad
    input).
    """

    def __init__(self, status: int, detail: str, *, denied: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.denied = denied or status in (401, 403, 404, 410)


def not_found() -> RefusedError:
    return RefusedError(404, N_("No such conversation."))


def gone() -> RefusedError:
    return RefusedError(410, N_("This conversation passed its retention period and was deleted."))


# Who the caller is


_TEAM_CLIENTS = cast(Table, CareTeamClient.__table__)
_TEAM_STAFF = cast(Table, CareTeamStaff.__table__)
# Built once: every API request resolves its caller.
_TEAM_OF_CLIENT = select(_TEAM_CLIENTS.c.care_team_id).where(
    _TEAM_CLIENTS.c.client_id == bindparam("client_id")
)
_TEAM_ROLES = cast(Table, CareTeamRole.__table__)
_POOL_ROLES = cast(Table, CareTeamPoolRole.__table__)
_GRANTS = cast(Table, BreakGlassGrant.__table__)
# A staff member's role: what they may see and do.
_STAFF_ROLE = (
    select(_TEAM_ROLES.c.id, _TEAM_ROLES.c.sees_all_pools, _TEAM_ROLES.c.is_team_admin)
    .select_from(_TEAM_STAFF.join(_TEAM_ROLES, _TEAM_ROLES.c.id == _TEAM_STAFF.c.role_id))
    .where(
        _TEAM_STAFF.c.care_team_id == bindparam("team"),
        _TEAM_STAFF.c.account_id == bindparam("account"),
    )
)
_POOLS_OF_ROLE = select(_POOL_ROLES.c.pool_id).where(_POOL_ROLES.c.role_id == bindparam("role"))
_GLASS = select(_GRANTS.c.thread_id).where(
    _GRANTS.c.account_id == bindparam("account"),
    _GRANTS.c.care_team_id == bindparam("team"),
    _GRANTS.c.expires_at > bindparam("now", type_=UtcDateTime()),
)


# A client's care team as this process last read it: every API request asks, and
# membership changes rarely. Only found teams are kept (a client just added acts at
# once); removing a client from its team takes effect within TEAM_CACHE_SECONDS.
TEAM_CACHE_SECONDS = 5.0
_teams: WeakKeyDictionary[object, TTLCache[str, str]] = WeakKeyDictionary()
# Requests run in worker threads: one lock around both caches (never held across a query).
_lock = threading.Lock()


def _monotonic() -> float:
    # Looked up at each call, not bound once: the clock is this module's time.
    return time.monotonic()


def _cache_of(caches: WeakKeyDictionary[object, TTLCache[K, V]], db: Session) -> TTLCache[K, V]:
    bind = db.get_bind()
    found = caches.get(bind)
    if found is None:
        found = caches.setdefault(bind, TTLCache(10_000, TEAM_CACHE_SECONDS, timer=_monotonic))
    return found


def _team_of(db: Session, client_id: str) -> str | None:
    with _lock:
        cache = _cache_of(_teams, db)
        cached = cache.get(client_id)
    if cached is not None:
        return cached
    team: str | None = db.execute(_TEAM_OF_CLIENT, {"client_id": client_id}).scalar()
    with _lock:
        if team is None:
            cache.pop(client_id, None)
        else:
            cache[client_id] = team
    return team


# A care-team app's own token found in standing (identity.interfaces), as this process
# last read it: an app presents the same token on every call of its life, and the lookup
# would be the one statement its request makes beyond its work (about 8% of a read or a
# post). Kept as long as the team is: a revoked app token, or a disabled app, is refused
# within TEAM_CACHE_SECONDS. A token a person authorized is checked on every request.
_app_tokens: WeakKeyDictionary[object, TTLCache[tuple[str, str], bool]] = WeakKeyDictionary()


def _check_app_token(db: Session, token: AccessToken) -> None:
    key = (token.client_id, token.jti)
    with _lock:
        cache = _cache_of(_app_tokens, db)
        if key in cache:
            return
    check_client_token(db, token)  # raises WithdrawnError
    with _lock:
        cache[key] = True


def actor_for_token(db: Session, token: AccessToken) -> Actor | None:
    """Whom the token acts for, or None; RefusedError (401) if it was withdrawn before it
    expired: its grant ended (account disabled, app revoked, code or refresh token
    replayed), the token revoked, or its client disabled. For a token a person authorized
    identity's lookup (identity.interfaces.person_of_token), made on every request, says
    so: the next request sees a withdrawal. An app's own token: within
    TEAM_CACHE_SECONDS."""
    try:
        return _actor(db, token)
    except WithdrawnError:
        raise RefusedError(401, WITHDRAWN) from None


def _actor(db: Session, token: AccessToken) -> Actor | None:
    team = _team_of(db, token.client_id)
    if token.is_client_only:
        if team is None:
            return None
        _check_app_token(db, token)
        return Actor("app", token.client_id, team)
    person = person_of_token(db, token)
    if person is None:
        return None
    if team is not None:
        return _staff(db, team, person.account_id)
    if person.patient_id is None:
        return None
    return Actor("patient", person.patient_id)


def _staff(db: Session, team: str, account_id: str) -> Actor | None:
    """A staff member of ``team`` with what their role lets them see; None if the account
    is not (or no longer: offboarded) staff of the team. Read on every request, so a
    change of role or an offboarding applies to the next one."""
    role = db.execute(_STAFF_ROLE, {"team": team, "account": account_id}).first()
    if role is None:
        return None
    role_id, sees_all, admin = role
    if sees_all:
        return Actor("staff", account_id, team, team_admin=bool(admin))
    pools = frozenset(db.execute(_POOLS_OF_ROLE, {"role": role_id}).scalars())
    glass = frozenset(
        db.execute(_GLASS, {"account": account_id, "team": team, "now": utcnow()}).scalars()
    )
    return Actor("staff", account_id, team, pools=pools, glass=glass, team_admin=bool(admin))


@dataclass(frozen=True)
class Caller:
    """A not-yet-resolved caller: how to find its actor, and its name if that fails."""

    label: str
    resolve: Callable[[Session], Actor | None]

    @classmethod
    def of_token(cls, token: AccessToken) -> Caller:
        return cls(f"client:{token.client_id}", lambda db: actor_for_token(db, token))

    @classmethod
    def of_patient(cls, patient_id: str) -> Caller:
        """A signed-in, verified patient on the web pages (identity's require_patient)."""
        actor = Actor("patient", patient_id)
        return cls(actor.participant, lambda db: actor)


# What they may reach


def thread_target(thread_id: str) -> str:
    return f"thread:{thread_id}" if THREAD_ID.fullmatch(thread_id) else "thread:malformed"


def load_thread(db: Session, actor: Actor, thread_id: str, *, lock: bool = False) -> Thread:
    """The actor's thread, or a 404 whether it exists or not; 410 once shredded."""
    if not THREAD_ID.fullmatch(thread_id):
        raise not_found()
    query = select(Thread).where(Thread.id == thread_id)
    if lock:
        query = query.with_for_update()
    thread = db.execute(query).scalar_one_or_none()
    if thread is None or not may_see(actor, thread):
        raise not_found()
    if thread.shredded_at is not None or thread.data_key_wrapped is None:
        raise gone()
    return thread


def may_see(actor: Actor, thread: Any) -> bool:
    """The one rule of who sees a thread (a Thread, or a row with its columns): the
    patient's own; for a care team, its team's, and for staff whose role does not see
    every pool, only the team-wide pool's (NULL), their pools', and those they broke the
    glass on while the grant lasts. Every read, post, close and download passes here."""
    if not actor.for_care_team:
        return bool(thread.patient_id == actor.id)
    if thread.care_team_id != actor.care_team_id:
        return False
    return may_see_pool(actor, thread.pool_id) or thread.id in actor.glass


def may_see_pool(actor: Actor, pool_id: str | None) -> bool:
    return actor.pools is None or pool_id is None or pool_id in actor.pools


def sees_pool_of(actor: Actor, pool_id: Any, thread_id: Any) -> ColumnElement[bool]:
    """may_see's pool rule as a SQL condition on a thread's pool and ID columns: every
    query that lists or counts a team's threads for staff applies it (a count of the
    threads of a pool the staff member does not see tells them those threads exist)."""
    if actor.pools is None:
        return true()
    return or_(pool_id.is_(None), pool_id.in_(actor.pools), thread_id.in_(actor.glass))


# Every attempt, audited


def perform(
    runtime: Runtime,
    caller: Caller,
    *,
    action: str,
    target: str,
    request_id: str | None,
    work: Callable[[Session, Actor], T],
) -> T:
    """Run ``work`` for the caller in one transaction that also holds its audit record.

    A refusal rolls the work back and is audited as denied in a transaction of its own;
    content that does not open is audited as failed and logged with IDs only.
    """
    label = caller.label
    try:
        with transaction(runtime.sessions) as db:
            actor = caller.resolve(db)
            if actor is None:
                raise RefusedError(404 if target.startswith("thread:") else 403, _NO_ACCESS)
            label = actor.participant
            # Staged before the work (a refusal rolls it back with the work), so a hot
            # path can write it along with its own rows (messaging.threads).
            audit.stage(
                db,
                actor=label,
                action=action,
                outcome=Outcome.ALLOWED,
                target=target,
                request_id=request_id,
            )
            return work(db, actor)
    except RefusedError as exc:
        outcome = Outcome.DENIED if exc.denied else Outcome.FAILED
        _record(
            runtime, label, action=action, target=target, outcome=outcome, request_id=request_id
        )
        raise
    except ContentUnavailableError as exc:
        # IDs and key IDs only: the reason names no content.
        level = logging.INFO if isinstance(exc, ShreddedError) else logging.ERROR
        log.log(level, "message content unavailable: %s", exc, extra={"target": target})
        _record(
            runtime,
            label,
            action=action,
            target=target,
            outcome=Outcome.FAILED,
            request_id=request_id,
        )
        if isinstance(exc, KeyUnavailableError):
            raise RefusedError(503, N_("Messages cannot be decrypted right now.")) from None
        raise RefusedError(
            500, N_("This content failed its integrity check and cannot be shown.")
        ) from None


_NO_ACCESS = "This token does not act for a patient or a care team."
WITHDRAWN = "The access token is no longer valid."


def _record(
    runtime: Runtime,
    actor: str,
    *,
    action: str,
    target: str,
    outcome: Outcome,
    request_id: str | None,
) -> None:
    with transaction(runtime.sessions) as db:
        audit.append(
            db, actor=actor, action=action, outcome=outcome, target=target, request_id=request_id
        )
