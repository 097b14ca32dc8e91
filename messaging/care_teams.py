"""Care teams, the OIDC clients that act for them, and their staff (operator actions)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.ids import new_id
from carebridge.keyring import Keyring
from carebridge.runtime import Runtime
from identity.interfaces import account_exists, end_staff_access
from messaging import invites, roles
from messaging.models import BreakGlassGrant, CareTeam, CareTeamClient, CareTeamStaff, Thread


class CareTeamError(Exception):
    """An operator's request that cannot be carried out; the message is one line."""


@dataclass(frozen=True)
class TeamInfo:
    id: str
    name: str
    retention_days: int
    clients: list[str]
    staff: int


def _audit(db: Session, actor: str, action: str, target: str) -> None:
    audit.append(db, actor=actor, action=action, outcome=Outcome.ALLOWED, target=target)


def create(runtime: Runtime, *, name: str, retention_days: int | None, actor: str) -> str:
    name = " ".join(name.split())
    if not 1 <= len(name) <= 200:
        raise CareTeamError("the name must be 1 to 200 characters")
    days = retention_days or runtime.settings.retention_days_default
    if not 1 <= days <= 36500:
        raise CareTeamError("retention must be 1 to 36500 days")
    team_id = new_id("ct")
    with transaction(runtime.sessions) as db:
        db.add(CareTeam(id=team_id, name=name, retention_days=days, created_at=datetime.now(UTC)))
        db.flush()
        roles.create_defaults(db, team_id)
        _audit(db, actor, "messaging.care_team.create", f"care_team:{team_id}")
    return team_id


def set_retention(runtime: Runtime, team_id: str, *, days: int, actor: str) -> None:
    if not 1 <= days <= 36500:
        raise CareTeamError("retention must be 1 to 36500 days")
    with transaction(runtime.sessions) as db:
        team = db.get(CareTeam, team_id)
        if team is None:
            raise CareTeamError(f"no care team {team_id}")
        team.retention_days = days
        _audit(db, actor, "messaging.care_team.retention", f"care_team:{team_id}")


def add_client(runtime: Runtime, team_id: str, client_id: str, *, actor: str) -> None:
    with transaction(runtime.sessions) as db:
        if db.get(CareTeam, team_id) is None:
            raise CareTeamError(f"no care team {team_id}")
        existing = db.get(CareTeamClient, client_id)
        if existing is not None:
            if existing.care_team_id == team_id:
                return
            raise CareTeamError(f"client {client_id} already acts for {existing.care_team_id}")
        db.add(
            CareTeamClient(client_id=client_id, care_team_id=team_id, created_at=datetime.now(UTC))
        )
        db.flush()
        _audit(db, actor, "messaging.care_team.add_client", f"client:{client_id}")


def remove_client(runtime: Runtime, team_id: str, client_id: str, *, actor: str) -> None:
    with transaction(runtime.sessions) as db:
        existing = db.get(CareTeamClient, client_id)
        if existing is None or existing.care_team_id != team_id:
            raise CareTeamError(f"client {client_id} does not act for {team_id}")
        db.delete(existing)
        _audit(db, actor, "messaging.care_team.remove_client", f"client:{client_id}")


def add_staff(
    runtime: Runtime, team_id: str, account_id: str, *, actor: str, role: str | None = None
) -> None:
    """Make the account staff of the team with ``role`` (by name; default
    roles.DEFAULT_STAFF_ROLE). Already staff: nothing changes (roles.set_staff_role does)."""
    with transaction(runtime.sessions) as db:
        if db.get(CareTeam, team_id) is None:
            raise CareTeamError(f"no care team {team_id}")
        if not account_exists(db, account_id):
            raise CareTeamError(f"no account {account_id}")
        if db.get(CareTeamStaff, (team_id, account_id)) is not None:
            return
        try:
            role_id = roles.role_named(db, team_id, role or roles.DEFAULT_STAFF_ROLE).id
        except roles.RoleError as exc:
            raise CareTeamError(str(exc)) from None
        db.add(
            CareTeamStaff(
                care_team_id=team_id,
                account_id=account_id,
                role_id=role_id,
                created_at=datetime.now(UTC),
            )
        )
        db.flush()
        _audit(db, actor, "messaging.care_team.add_staff", f"account:{account_id}")


def remove_staff(
    runtime: Runtime, team_id: str, account_id: str, *, actor: str, request_id: str | None = None
) -> None:
    """Offboarding: the membership, and the person's sessions and grants to the team's
    clients, end in one transaction (identity.interfaces.end_staff_access); an access
    token they still hold is refused on its next request (no longer staff, and its grant
    withdrawn). Their break-the-glass grants go with the membership."""
    with transaction(runtime.sessions) as db:
        offboard(db, runtime.keyring, team_id, account_id, actor=actor, request_id=request_id)


def offboard(
    db: Session,
    keyring: Keyring,
    team_id: str,
    account_id: str,
    *,
    actor: str,
    request_id: str | None,
) -> None:
    """remove_staff in the caller's transaction (a team admin's API request). Pending
    invites the person sent, or that were sent to them, are withdrawn too."""
    existing = db.get(CareTeamStaff, (team_id, account_id))
    if existing is None:
        raise CareTeamError(f"account {account_id} is not staff of {team_id}")
    clients = db.scalars(
        select(CareTeamClient.client_id).where(CareTeamClient.care_team_id == team_id)
    ).all()
    # identity's session lock (the account row) first, before any row here is written:
    # deleting the account takes that lock and then cascades to care_team_staff, so the
    # other order could deadlock with it.
    end_staff_access(db, account_id, client_ids=clients, actor=actor, request_id=request_id)
    db.delete(existing)
    db.execute(
        delete(BreakGlassGrant).where(
            BreakGlassGrant.care_team_id == team_id, BreakGlassGrant.account_id == account_id
        )
    )
    invites.withdraw_on_offboarding(db, keyring, team_id, account_id, actor=actor)
    audit.append(
        db,
        actor=actor,
        action="messaging.care_team.remove_staff",
        outcome=Outcome.ALLOWED,
        target=f"account:{account_id}",
        request_id=request_id,
    )


def list_teams(runtime: Runtime) -> list[TeamInfo]:
    with runtime.sessions() as db:
        counts = select(CareTeamStaff.care_team_id, func.count()).group_by(
            CareTeamStaff.care_team_id
        )
        staff: dict[str, int] = {team_id: int(n) for team_id, n in db.execute(counts)}
        clients: dict[str, list[str]] = {}
        for client in db.scalars(select(CareTeamClient).order_by(CareTeamClient.client_id)):
            clients.setdefault(client.care_team_id, []).append(client.client_id)
        return [
            TeamInfo(
                team.id,
                team.name,
                team.retention_days,
                clients.get(team.id, []),
                int(staff.get(team.id, 0)),
            )
            for team in db.scalars(select(CareTeam).order_by(CareTeam.created_at, CareTeam.id))
        ]


def team_name_of_thread(db: Session, thread_id: str) -> str | None:
    """The name of the care team a thread belongs to (None: no such thread), in the
    caller's transaction: what sms names in a notice the patient allowed to name it."""
    query = select(CareTeam.name).join(Thread, Thread.care_team_id == CareTeam.id)
    return db.scalar(query.where(Thread.id == thread_id))
