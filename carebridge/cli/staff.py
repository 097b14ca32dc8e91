"""``carebridge staff``: a care team's roles and pools, staff roles, offboarding and the
break-the-glass report (each change audited as the operator)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

from carebridge.cli.common import CommandError, add_parser, require_current_schema, runtime
from carebridge.db import transaction
from carebridge.runtime import Runtime
from messaging import break_glass, care_teams, invites, roles

_T = TypeVar("_T")
OPERATOR = "operator"


def register(commands: Any) -> None:
    group = add_parser(commands, "staff", "Care-team staff: roles, pools, offboarding.")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def team_command(name: str, help_text: str, handler: Callable[..., int]) -> Any:
        command = add_parser(sub, name, help_text)
        command.add_argument("team", help="care team ID (ct_...)")
        command.set_defaults(handler=handler)
        return command

    team_command("roles", "List the team's roles and how many staff hold each.", list_roles)
    add = team_command("add-role", "Add a role to the team.", add_role)
    add.add_argument("name")
    add.add_argument("--sees-all-pools", action="store_true", help="sees every pool's threads")
    add.add_argument("--team-admin", action="store_true", help="invites and offboards staff")
    rename = team_command("rename-role", "Rename one of the team's roles.", rename_role)
    rename.add_argument("old")
    rename.add_argument("new")
    team_command("remove-role", "Remove a role no staff holds.", remove_role).add_argument("name")
    team_command("pools", "List the team's pools and the roles working each.", list_pools)
    pool = team_command("add-pool", "Add a pool worked by the named roles.", add_pool)
    pool.add_argument("name")
    pool.add_argument("--role", action="append", default=[], help="a role working it")
    team_command(
        "remove-pool", "Remove a pool (its threads go to the team-wide pool).", remove_pool
    ).add_argument("pool_id")
    role = team_command("set-role", "Give a staff member another role.", set_role)
    role.add_argument("account_id")
    role.add_argument("role")
    invite = team_command("invite", "E-mail a one-time enrolment link for a role.", invite_staff)
    invite.add_argument("email")
    invite.add_argument("--role", required=True, help="the team's role to give")
    team_command(
        "offboard", "Remove a staff member and end their sessions and tokens at once.", offboard
    ).add_argument("account_id")
    team_command("break-glass-report", "List the team's emergency accesses (no reasons).", report)


def _run(operation: Callable[[Runtime], _T]) -> _T:
    rt = runtime()
    try:
        require_current_schema(rt)
        return operation(rt)
    except (roles.RoleError, care_teams.CareTeamError, invites.InviteError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        rt.close()


def list_roles(args: argparse.Namespace) -> int:
    for role in _run(lambda rt: roles.list_roles(rt, args.team)):
        flags = [
            *(["all pools"] if role.sees_all_pools else []),
            *(["team admin"] if role.is_team_admin else []),
        ]
        print(f"{role.name}  {', '.join(flags) or '-'}  {role.staff} staff")
    return 0


def add_role(args: argparse.Namespace) -> int:
    _run(
        lambda rt: roles.add_role(
            rt,
            args.team,
            args.name,
            sees_all_pools=args.sees_all_pools,
            is_team_admin=args.team_admin,
            actor=OPERATOR,
        )
    )
    print(f"{args.team} has a role {args.name!r}")
    return 0


def rename_role(args: argparse.Namespace) -> int:
    _run(lambda rt: roles.rename_role(rt, args.team, args.old, args.new, actor=OPERATOR))
    print(f"role {args.old!r} is now {args.new!r}")
    return 0


def remove_role(args: argparse.Namespace) -> int:
    _run(lambda rt: roles.remove_role(rt, args.team, args.name, actor=OPERATOR))
    print(f"role {args.name!r} removed")
    return 0


def list_pools(args: argparse.Namespace) -> int:
    for pool in _run(lambda rt: roles.list_pools(rt, args.team)):
        print(f"{pool.id}  {pool.name}  {', '.join(pool.roles) or 'no roles'}")
    return 0


def add_pool(args: argparse.Namespace) -> int:
    pool_id = _run(
        lambda rt: roles.add_pool(rt, args.team, args.name, roles=args.role, actor=OPERATOR)
    )
    print(pool_id)
    return 0


def remove_pool(args: argparse.Namespace) -> int:
    _run(lambda rt: roles.remove_pool(rt, args.team, args.pool_id, actor=OPERATOR))
    print(f"pool {args.pool_id} removed")
    return 0


def set_role(args: argparse.Namespace) -> int:
    _run(lambda rt: roles.set_staff_role(rt, args.team, args.account_id, args.role, actor=OPERATOR))
    print(f"account {args.account_id} is {args.role!r} in {args.team}")
    return 0


def invite_staff(args: argparse.Namespace) -> int:
    def send(rt: Runtime) -> invites.Sent:
        with transaction(rt.sessions) as db:
            return invites.invite(
                db, rt, args.team, email=args.email, role=args.role, actor=OPERATOR
            )

    sent = _run(send)
    print(f"invite {sent.id} sent; the link works until {sent.expires_at.isoformat()}")
    return 0


def offboard(args: argparse.Namespace) -> int:
    _run(lambda rt: care_teams.remove_staff(rt, args.team, args.account_id, actor=OPERATOR))
    print(f"account {args.account_id} offboarded from {args.team}: sessions and tokens ended")
    return 0


def report(args: argparse.Namespace) -> int:
    def events(rt: Runtime) -> list[break_glass.BreakGlassEvent]:
        with rt.sessions() as db:
            return break_glass.report(db, rt, args.team, since=None, reasons=False)

    for event in _run(events):
        print(
            f"{event.created_at.isoformat()}  account {event.account_id}  thread"
            f" {event.thread_id}  until {event.expires_at.isoformat()}"
        )
    return 0
