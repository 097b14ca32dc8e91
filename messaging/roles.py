"""Staff roles and pools of a care team: staff see what their job needs, no more.

A care team has roles (the defaults below, then whatever its admins make of them) and
pools of work; a pool is worked by some roles (``care_team_pool_role``), and a thread is
routed to one pool or to none (the team-wide pool, seen by every role). A staff member
has one role: a role that ``sees_all_pools`` sees every thread of the team; any other
sees the team-wide pool's threads and its pools' (messaging.access.may_see), and any
other thread only by breaking the glass (messaging.break_glass). A team admin role
(``is_team_admin``) invites and offboards staff and is told of every break-the-glass.

Operator and team-admin actions here are each audited, in a transaction of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.ids import new_id
from carebridge.runtime import Runtime
from messaging.models import CareTeam, CareTeamPool, CareTeamPoolRole, CareTeamRole, CareTeamStaff

# (name, sees every pool, team admin): created for every new team (and by migration 0024
# for every existing one). Only the admin sees every pool by default: with no pools yet,
# every thread is the team-wide pool's, so everyone sees everything until pools exist.
DEFAULT_ROLES = (
    ("clinician", False, False),
    ("nurse", False, False),
    ("front desk", False, False),
    ("team admin", True, True),
)
# The role a staff member gets when none is named (carebridge messaging add-staff).
DEFAULT_STAFF_ROLE = "clinician"
MAX_NAME = 100


class RoleError(Exception):
    """A request about roles or pools that cannot be carried out; one line, safe to show."""


@dataclass(frozen=True)
class RoleInfo:
    id: str
    name: str
    sees_all_pools: bool
    is_team_admin: bool
    staff: int


@dataclass(frozen=True)
class PoolInfo:
    id: str
    name: str
    roles: list[str]


def _name(text: str) -> str:
    name = " ".join(text.split())
    if not 1 <= len(name) <= MAX_NAME:
        raise RoleError(f"a name must be 1 to {MAX_NAME} characters")
    return name


def _audit(db: Session, actor: str, action: str, target: str) -> None:
    audit.append(db, actor=actor, action=action, outcome=Outcome.ALLOWED, target=target)


def _team(db: Session, team_id: str) -> CareTeam:
    team = db.get(CareTeam, team_id)
    if team is None:
        raise RoleError(f"no care team {team_id}")
    return team


def create_defaults(db: Session, team_id: str) -> None:
    """The default roles of a new team, in ``db``'s transaction."""
    now = datetime.now(UTC)
    for name, sees_all, admin in DEFAULT_ROLES:
        db.add(
            CareTeamRole(
                id=new_id("role"),
                care_team_id=team_id,
                name=name,
                sees_all_pools=sees_all,
                is_team_admin=admin,
                created_at=now,
            )
        )


def role_named(db: Session, team_id: str, name: str) -> CareTeamRole:
    role = db.scalars(
        select(CareTeamRole).where(
            CareTeamRole.care_team_id == team_id, CareTeamRole.name == " ".join(name.split())
        )
    ).first()
    if role is None:
        raise RoleError(f"no role {name!r} in {team_id}")
    return role


def pool_of_team(db: Session, team_id: str, pool_id: str) -> bool:
    pool = db.get(CareTeamPool, pool_id)
    return pool is not None and pool.care_team_id == team_id


def add_role(
    runtime: Runtime,
    team_id: str,
    name: str,
    *,
    sees_all_pools: bool,
    is_team_admin: bool,
    actor: str,
) -> str:
    name = _name(name)
    with transaction(runtime.sessions) as db:
        _team(db, team_id)
        if db.scalars(
            select(CareTeamRole.id).where(
                CareTeamRole.care_team_id == team_id, CareTeamRole.name == name
            )
        ).first():
            raise RoleError(f"{team_id} already has a role {name!r}")
        role_id = new_id("role")
        db.add(
            CareTeamRole(
                id=role_id,
                care_team_id=team_id,
                name=name,
                sees_all_pools=sees_all_pools,
                is_team_admin=is_team_admin,
                created_at=datetime.now(UTC),
            )
        )
        db.flush()
        _audit(db, actor, "messaging.role.add", f"role:{role_id}")
    return role_id


def rename_role(runtime: Runtime, team_id: str, old: str, new: str, *, actor: str) -> None:
    new = _name(new)
    with transaction(runtime.sessions) as db:
        role = role_named(db, team_id, old)
        role.name = new
        _audit(db, actor, "messaging.role.rename", f"role:{role.id}")


def remove_role(runtime: Runtime, team_id: str, name: str, *, actor: str) -> None:
    """Refused while staff hold the role: give them another one first."""
    with transaction(runtime.sessions) as db:
        role = role_named(db, team_id, name)
        held = db.scalar(select(func.count()).where(CareTeamStaff.role_id == role.id))
        if held:
            raise RoleError(f"{held} staff member(s) hold {name!r}: give them another role first")
        db.delete(role)
        _audit(db, actor, "messaging.role.remove", f"role:{role.id}")


def set_staff_role(
    runtime: Runtime, team_id: str, account_id: str, role: str, *, actor: str
) -> None:
    with transaction(runtime.sessions) as db:
        staff = db.get(CareTeamStaff, (team_id, account_id))
        if staff is None:
            raise RoleError(f"account {account_id} is not staff of {team_id}")
        staff.role_id = role_named(db, team_id, role).id
        _audit(db, actor, "messaging.staff.role", f"account:{account_id}")


def add_pool(runtime: Runtime, team_id: str, name: str, *, roles: list[str], actor: str) -> str:
    """A pool worked by ``roles`` (names of the team's roles)."""
    name = _name(name)
    with transaction(runtime.sessions) as db:
        _team(db, team_id)
        role_ids = [role_named(db, team_id, role).id for role in roles]
        if db.scalars(
            select(CareTeamPool.id).where(
                CareTeamPool.care_team_id == team_id, CareTeamPool.name == name
            )
        ).first():
            raise RoleError(f"{team_id} already has a pool {name!r}")
        pool_id = new_id("pool")
        db.add(
            CareTeamPool(id=pool_id, care_team_id=team_id, name=name, created_at=datetime.now(UTC))
        )
        db.flush()
        db.add_all(CareTeamPoolRole(pool_id=pool_id, role_id=role_id) for role_id in set(role_ids))
        _audit(db, actor, "messaging.pool.add", f"pool:{pool_id}")
    return pool_id


def remove_pool(runtime: Runtime, team_id: str, pool_id: str, *, actor: str) -> None:
    """Its threads fall back to the team-wide pool (the foreign key's SET NULL)."""
    with transaction(runtime.sessions) as db:
        pool = db.get(CareTeamPool, pool_id)
        if pool is None or pool.care_team_id != team_id:
            raise RoleError(f"no pool {pool_id} in {team_id}")
        db.delete(pool)
        _audit(db, actor, "messaging.pool.remove", f"pool:{pool_id}")


def list_roles(runtime: Runtime, team_id: str) -> list[RoleInfo]:
    with runtime.sessions() as db:
        _team(db, team_id)
        counts = (
            select(CareTeamStaff.role_id, func.count())
            .where(CareTeamStaff.care_team_id == team_id)
            .group_by(CareTeamStaff.role_id)
        )
        held = {role_id: int(n) for role_id, n in db.execute(counts).tuples()}
        roles = db.scalars(
            select(CareTeamRole)
            .where(CareTeamRole.care_team_id == team_id)
            .order_by(CareTeamRole.name)
        )
        return [
            RoleInfo(r.id, r.name, r.sees_all_pools, r.is_team_admin, int(held.get(r.id, 0)))
            for r in roles
        ]


def list_pools(runtime: Runtime, team_id: str) -> list[PoolInfo]:
    with runtime.sessions() as db:
        _team(db, team_id)
        rows = db.execute(
            select(CareTeamPool.id, CareTeamPool.name, CareTeamRole.name)
            .outerjoin(CareTeamPoolRole, CareTeamPoolRole.pool_id == CareTeamPool.id)
            .outerjoin(CareTeamRole, CareTeamRole.id == CareTeamPoolRole.role_id)
            .where(CareTeamPool.care_team_id == team_id)
            .order_by(CareTeamPool.name, CareTeamRole.name)
        ).all()
        pools: dict[str, PoolInfo] = {}
        for pool_id, name, role in rows:
            info = pools.setdefault(pool_id, PoolInfo(pool_id, name, []))
            if role is not None:
                info.roles.append(role)
        return list(pools.values())


def team_admins(db: Session, team_id: str) -> list[str]:
    """The account IDs of the team's admins."""
    return list(
        db.scalars(
            select(CareTeamStaff.account_id)
            .join(CareTeamRole, CareTeamRole.id == CareTeamStaff.role_id)
            .where(CareTeamStaff.care_team_id == team_id, CareTeamRole.is_team_admin.is_(True))
            .order_by(CareTeamStaff.account_id)
        )
    )
