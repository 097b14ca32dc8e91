"""Break the glass: a staff member's emergency access to a thread outside their pools.

Staff see the threads of their role's pools only (messaging.roles); in an emergency one
may open any thread of their team by giving a typed reason. That grants them this
thread for ``break_glass_hours`` (messaging.access reads live grants with the staff
member's role), is audited (``messaging.thread.break_glass``, by messaging.access.perform),
and each team admin is e-mailed a notice through the outbox: that emergency access was
used on a thread of their team, and to see the report. The notice names no patient, no
thread and no reason (no PHI by e-mail); the reason is sealed under the thread's own data
key, so it is readable in the team admin's report and shredded with the thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from carebridge.i18n import N_, gettext
from carebridge.ids import new_id
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from messaging import admin_notices, crypto
from messaging.access import THREAD_ID, Actor, RefusedError, not_found
from messaging.models import BreakGlassGrant, Thread

MAX_REASON = 500


@dataclass(frozen=True)
class Grant:
    thread_id: str
    expires_at: datetime


@dataclass(frozen=True)
class BreakGlassEvent:
    id: str
    account_id: str
    thread_id: str
    created_at: datetime
    expires_at: datetime
    # For the team admin's report only (None for the operator's, and once shredded).
    reason: str | None


def break_glass(
    db: Session, runtime: Runtime, actor: Actor, thread_id: str, *, reason: str
) -> Grant:
    """Grant ``actor`` (staff) the thread of their team for the configured hours."""
    if actor.kind != "staff" or actor.care_team_id is None:
        raise RefusedError(403, N_("Only a care team's staff member can use emergency access."))
    reason = " ".join(reason.split())
    shortest = runtime.settings.break_glass_reason_min_chars
    if len(reason) < shortest or len(reason) > MAX_REASON:
        raise RefusedError(
            422, f"Give the reason for emergency access in {shortest} to {MAX_REASON} characters."
        )
    if not THREAD_ID.fullmatch(thread_id):
        raise not_found()
    thread = db.get(Thread, thread_id)
    if thread is None or thread.care_team_id != actor.care_team_id:
        raise not_found()
    if thread.data_key_wrapped is None:
        raise not_found()
    grant_id = new_id("bg")
    now = utcnow()
    cipher = crypto.cipher_for(runtime.keyring, thread)
    grant = BreakGlassGrant(
        id=grant_id,
        care_team_id=actor.care_team_id,
        account_id=actor.id,
        thread_id=thread_id,
        reason_encrypted=cipher.seal_text(grant_id, crypto.BREAK_GLASS_REASON, reason),
        created_at=now,
        expires_at=now + timedelta(hours=runtime.settings.break_glass_hours),
    )
    db.add(grant)
    _tell_admins(db, runtime, actor.care_team_id)
    return Grant(thread_id, grant.expires_at)


def _tell_admins(db: Session, runtime: Runtime, team_id: str) -> None:
    """One notice per team admin with a verified address, in the grant's transaction."""
    text = gettext(
        "A staff member of your care team used emergency access (break the glass) on a"
        " conversation outside their pools.\n\nSee the emergency access report for who,"
        " when and why.\n\n{service}\n"
    ).format(service=runtime.settings.email_sender_name)
    admin_notices.email_team_admins(
        db,
        runtime,
        team_id,
        subject=gettext("Emergency access was used in your care team"),
        text=text,
    )


def report(
    db: Session, runtime: Runtime, team_id: str, *, since: datetime | None, reasons: bool
) -> list[BreakGlassEvent]:
    """The team's break-the-glass events, newest first; with ``reasons`` (a team admin,
    who sees every thread of the team anyway) the reasons opened."""
    query = select(BreakGlassGrant, Thread).join(Thread, Thread.id == BreakGlassGrant.thread_id)
    query = query.where(BreakGlassGrant.care_team_id == team_id)
    if since is not None:
        query = query.where(BreakGlassGrant.created_at >= since)
    query = query.order_by(BreakGlassGrant.created_at.desc(), BreakGlassGrant.id)
    events = []
    for grant, thread in db.execute(query).tuples():
        reason = None
        if reasons and grant.reason_encrypted is not None and thread.data_key_wrapped is not None:
            cipher = crypto.cipher_for(runtime.keyring, thread)
            reason = cipher.open_text(grant.id, crypto.BREAK_GLASS_REASON, grant.reason_encrypted)
        events.append(
            BreakGlassEvent(
                grant.id,
                grant.account_id,
                grant.thread_id,
                grant.created_at,
                grant.expires_at,
                reason,
            )
        )
    return events
