"""Staff invites: a team admin (or the operator) invites a future staff member by e-mail.

The invite is a one-time enrolment link (a 256-bit token) sent through the outbox's
e-mail channel (carebridge.mail, plumbing every package may use: messaging sends its own
e-mail rather than reach into identity's, and identity has nothing to say about a care
team). Only keyed hashes of the token and of the address are stored. The link leads to
sign-up or sign-in (identity's pages, MFA included: staff must have a second factor),
then to a confirmation; accepting makes the signed-in account staff of the team with the
invited role, once, before the link expires, and only if the account's verified sign-in
address is the invited one (a forwarded link is useless to anyone else). Sending is
capped per team and hour (``staff_invites_per_hour``). Each step is audited.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.i18n import gettext
from carebridge.ids import new_id
from carebridge.keyring import Keyring
from carebridge.mail import OutboxEmailSender
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity.interfaces import verified_email_of
from messaging import roles
from messaging.models import CareTeam, CareTeamRole, CareTeamStaff, StaffInvite

ENROL_PATH = "/staff/enrol"
_TOKEN = "staff_invite_token"  # noqa: S105 (a hash purpose, not a secret)
_EMAIL = "staff_invite_email"
MAX_EMAIL = 254


class InviteError(Exception):
    """An invite that cannot be sent; one line, safe to show."""


class TooManyInvitesError(InviteError):
    """The team sent staff_invites_per_hour invites in the last hour."""


class Refusal(StrEnum):
    """Why an enrolment link was refused (each a friendly page)."""

    UNKNOWN = "unknown"  # never issued, or malformed
    USED = "used"
    EXPIRED = "expired"
    OTHER_ADDRESS = "other_address"


class EnrolmentRefusedError(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.value)
        self.refusal = refusal


@dataclass(frozen=True)
class Sent:
    id: str
    expires_at: datetime


@dataclass(frozen=True)
class Pending:
    """What the confirmation page shows: the team's name and the role (no PHI)."""

    team_name: str
    role_name: str


def _normal(address: str) -> str:
    return address.strip().lower()


def invite(
    db: Session, runtime: Runtime, team_id: str, *, email: str, role: str, actor: str
) -> Sent:
    """Queue an enrolment link to ``email`` for ``role`` of the team, in ``db``'s
    transaction (sent if and only if it commits)."""
    address = _normal(email)
    if not 3 <= len(address) <= MAX_EMAIL or "@" not in address:
        raise InviteError("give the e-mail address to invite")
    if db.get(CareTeam, team_id) is None:
        raise InviteError(f"no care team {team_id}")
    try:
        role_id = roles.role_named(db, team_id, role).id
    except roles.RoleError as exc:
        raise InviteError(str(exc)) from None
    now = utcnow()
    recent = db.scalar(
        select(func.count()).where(
            StaffInvite.care_team_id == team_id,
            StaffInvite.created_at > now - timedelta(hours=1),
        )
    )
    if (recent or 0) >= runtime.settings.staff_invites_per_hour:
        raise TooManyInvitesError("too many invites from this team in the last hour")
    token = secrets.token_urlsafe(32)
    row = StaffInvite(
        id=new_id("inv"),
        care_team_id=team_id,
        role_id=role_id,
        email_hash=runtime.keyring.lookup_hash(_EMAIL, address),
        token_hash=runtime.keyring.lookup_hash(_TOKEN, token),
        invited_by=actor,
        created_at=now,
        expires_at=now + timedelta(days=runtime.settings.staff_invite_days),
    )
    db.add(row)
    db.flush()
    settings = runtime.settings
    link = f"{settings.issuer.rstrip('/')}{ENROL_PATH}?token={token}"
    subject = gettext("You are invited to join a care team")
    text = gettext(
        "You were invited to join a care team as a staff member.\n\nOpen this link to sign up"
        " or sign in, set up a second sign-in step, and accept:\n{link}\n\nThe link works"
        " once, for {days} days. If you did not expect this, ignore this e-mail.\n\n{service}\n"
    ).format(
        link=link,
        days=runtime.settings.staff_invite_days,
        service=runtime.settings.email_sender_name,
    )
    OutboxEmailSender(runtime).send_email(db, to=address, subject=subject, text=text)
    audit.append(
        db,
        actor=actor,
        action="messaging.staff.invite",
        outcome=Outcome.ALLOWED,
        target=f"invite:{row.id}",
    )
    return Sent(row.id, row.expires_at)


def _find(db: Session, runtime: Runtime, token: str, *, lock: bool = False) -> StaffInvite:
    if not 20 <= len(token) <= 100:
        raise EnrolmentRefusedError(Refusal.UNKNOWN)
    query = select(StaffInvite).where(
        StaffInvite.token_hash == runtime.keyring.lookup_hash(_TOKEN, token)
    )
    if lock:
        query = query.with_for_update()
    row = db.scalars(query).first()
    if row is None:
        raise EnrolmentRefusedError(Refusal.UNKNOWN)
    if row.used_at is not None:
        raise EnrolmentRefusedError(Refusal.USED)
    if row.expires_at <= utcnow():
        raise EnrolmentRefusedError(Refusal.EXPIRED)
    return row


def _check_address(db: Session, runtime: Runtime, row: StaffInvite, account_id: str) -> None:
    address = verified_email_of(db, runtime.keyring, account_id)
    presented = runtime.keyring.lookup_hash(_EMAIL, _normal(address or ""))
    if address is None or not hmac.compare_digest(presented, row.email_hash):
        raise EnrolmentRefusedError(Refusal.OTHER_ADDRESS)


def pending(db: Session, runtime: Runtime, token: str, account_id: str) -> Pending:
    """What accepting would do, for the confirmation page; refused like :func:`accept`."""
    row = _find(db, runtime, token)
    _check_address(db, runtime, row, account_id)
    team = db.get(CareTeam, row.care_team_id)
    role = db.get(CareTeamRole, row.role_id)
    if team is None or role is None:  # removed since: the foreign keys cascade
        raise EnrolmentRefusedError(Refusal.UNKNOWN)
    return Pending(team.name, role.name)


def accept(
    db: Session, runtime: Runtime, token: str, account_id: str, *, request_id: str | None
) -> str:
    """Make the account staff with the invited role (or give an existing member that
    role); the link is used up. Returns the team's ID."""
    row = _find(db, runtime, token, lock=True)
    _check_address(db, runtime, row, account_id)
    row.used_at = utcnow()
    row.used_by = account_id
    member = db.get(CareTeamStaff, (row.care_team_id, account_id))
    if member is None:
        db.add(
            CareTeamStaff(
                care_team_id=row.care_team_id,
                account_id=account_id,
                role_id=row.role_id,
                created_at=row.used_at,
            )
        )
    else:
        member.role_id = row.role_id
    db.flush()
    audit.append(
        db,
        actor=f"account:{account_id}",
        action="messaging.staff.enrol",
        outcome=Outcome.ALLOWED,
        target=f"invite:{row.id}",
        request_id=request_id,
    )
    return row.care_team_id


def record_refusal(
    runtime: Runtime, account_id: str, refusal: Refusal, *, request_id: str | None
) -> None:
    """A refused enrolment, audited as denied in a transaction of its own (the refused
    one rolled back); the target says why, never the token."""
    with transaction(runtime.sessions) as db:
        audit.append(
            db,
            actor=f"account:{account_id}",
            action="messaging.staff.enrol",
            outcome=Outcome.DENIED,
            target=f"invite:{refusal.value}",
            request_id=request_id,
        )


def withdraw_on_offboarding(
    db: Session, keyring: Keyring, team_id: str, account_id: str, *, actor: str
) -> int:
    """Offboarding ``account_id`` from the team: the links it sent that are still pending
    (an admin leaving must not be able to come back through an invite to an address of
    theirs) and those sent to its verified address (it would rejoin by accepting) expire
    now, each audited. In the offboarding's transaction; returns how many."""
    sent_to: list[ColumnElement[bool]] = []
    address = verified_email_of(db, keyring, account_id)
    if address is not None:
        sent_to.append(StaffInvite.email_hash == keyring.lookup_hash(_EMAIL, _normal(address)))
    now = utcnow()
    pending = db.scalars(
        select(StaffInvite)
        .where(
            StaffInvite.care_team_id == team_id,
            StaffInvite.used_at.is_(None),
            StaffInvite.expires_at > now,
            or_(StaffInvite.invited_by == f"account:{account_id}", *sent_to),
        )
        .with_for_update()
    ).all()
    for row in pending:
        row.expires_at = now
        audit.append(
            db,
            actor=actor,
            action="messaging.staff.invite_withdraw",
            outcome=Outcome.ALLOWED,
            target=f"invite:{row.id}",
        )
    db.flush()
    return len(pending)
