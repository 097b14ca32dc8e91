"""``carebridge messaging``: care teams, retention, legal hold and key checks (audited)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from carebridge.cli import care_relationships
from carebridge.cli.common import CommandError, add_parser, require_current_schema, runtime
from carebridge.runtime import Runtime
from messaging import care_teams, export, keys, retention, roles

_T = TypeVar("_T")
OPERATOR = "operator"


def register(commands: Any) -> None:
    group = add_parser(commands, "messaging", "Secure messaging: care teams, retention, holds.")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)

    teams = add_parser(sub, "care-teams", "Care teams, their OIDC clients and staff.")
    teams_sub = teams.add_subparsers(title="commands", metavar="COMMAND", required=True)
    create = add_parser(teams_sub, "create", "Register a care team; prints its ID.")
    create.add_argument("--name", required=True, help="the organization or team's name")
    create.add_argument(
        "--retention-days", type=int, help="how long threads are kept (default: setting)"
    )
    create.set_defaults(handler=create_team)
    add_parser(teams_sub, "list", "List care teams, clients and staff counts.").set_defaults(
        handler=list_teams
    )
    for name, help_text, handler, what in [
        ("add-client", "Let an OIDC client act for the team.", add_client, "client_id"),
        ("remove-client", "Stop a client acting for the team.", remove_client, "client_id"),
        ("add-staff", "Make an account staff of the team.", add_staff, "account_id"),
        ("remove-staff", "Remove an account from the team's staff.", remove_staff, "account_id"),
    ]:
        command = add_parser(teams_sub, name, help_text)
        command.add_argument("team", help="care team ID (ct_...)")
        command.add_argument(what)
        if name == "add-staff":
            command.add_argument(
                "--role", help=f"the team's role to give (default: {roles.DEFAULT_STAFF_ROLE})"
            )
        command.set_defaults(handler=handler)
    retention_cmd = add_parser(teams_sub, "set-retention", "Change a team's retention period.")
    retention_cmd.add_argument("team")
    retention_cmd.add_argument("days", type=int)
    retention_cmd.set_defaults(handler=set_retention)
    care_relationships.register(teams_sub)

    hold = add_parser(sub, "legal-hold", "Keep threads past retention (or release them).")
    hold_sub = hold.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, handler in [("set", hold_set), ("clear", hold_clear)]:
        command = add_parser(hold_sub, name, f"{name.capitalize()} a legal hold.")
        command.add_argument("--thread", action="append", default=[], help="thread ID (th_...)")
        command.add_argument("--patient", help="every thread of this patient ID")
        command.add_argument("--reason", required=True, help="why (kept with the hold)")
        command.set_defaults(handler=handler)

    add_parser(
        sub, "expire", "Crypto-shred threads past their team's retention (not those on hold)."
    ).set_defaults(handler=expire)
    export_cmd = add_parser(
        sub, "export", "Write a patient's conversations to a zip (a right-of-access request)."
    )
    export_cmd.add_argument("--patient", required=True, help="the patient ID")
    export_cmd.add_argument("--out", type=Path, required=True, help="zip file to create")
    export_cmd.set_defaults(handler=export_patient)
    add_parser(
        sub, "rewrap", "Re-wrap thread data keys still under an older KEK (after a rotation)."
    ).set_defaults(handler=rewrap)
    add_parser(
        sub, "check-keys", "Check every stored thread key opens with this keyring."
    ).set_defaults(handler=check_keys)


def _run(operation: Callable[[Runtime], _T]) -> _T:
    rt = runtime()
    try:
        require_current_schema(rt)
        return operation(rt)
    except (care_teams.CareTeamError, retention.RetentionError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        rt.close()


def create_team(args: argparse.Namespace) -> int:
    team_id = _run(
        lambda rt: care_teams.create(
            rt, name=args.name, retention_days=args.retention_days, actor=OPERATOR
        )
    )
    print(team_id)
    return 0


def list_teams(args: argparse.Namespace) -> int:
    for team in _run(care_teams.list_teams):
        clients = ", ".join(team.clients) or "no clients"
        print(
            f"{team.id}  {team.name}  retention {team.retention_days} days  "
            f"{clients}  {team.staff} staff"
        )
    return 0


def add_client(args: argparse.Namespace) -> int:
    _run(lambda rt: care_teams.add_client(rt, args.team, args.client_id, actor=OPERATOR))
    print(f"client {args.client_id} acts for {args.team}")
    return 0


def remove_client(args: argparse.Namespace) -> int:
    _run(lambda rt: care_teams.remove_client(rt, args.team, args.client_id, actor=OPERATOR))
    print(f"client {args.client_id} no longer acts for {args.team}")
    return 0


def add_staff(args: argparse.Namespace) -> int:
    _run(
        lambda rt: care_teams.add_staff(
            rt, args.team, args.account_id, actor=OPERATOR, role=args.role
        )
    )
    print(f"account {args.account_id} is staff of {args.team}")
    return 0


def remove_staff(args: argparse.Namespace) -> int:
    _run(lambda rt: care_teams.remove_staff(rt, args.team, args.account_id, actor=OPERATOR))
    print(f"account {args.account_id} is no longer staff of {args.team}: sessions and tokens ended")
    return 0


def set_retention(args: argparse.Namespace) -> int:
    _run(lambda rt: care_teams.set_retention(rt, args.team, days=args.days, actor=OPERATOR))
    print(f"{args.team} keeps threads {args.days} days after their last message")
    return 0


def _hold(args: argparse.Namespace, *, hold: bool) -> int:
    if not args.thread and not args.patient:
        raise CommandError("name threads with --thread or a patient with --patient")
    count = _run(
        lambda rt: retention.set_hold(
            rt,
            thread_ids=args.thread,
            patient_id=args.patient,
            reason=args.reason,
            actor=OPERATOR,
            hold=hold,
        )
    )
    print(f"legal hold {'set on' if hold else 'cleared from'} {count} thread(s)")
    return 0


def hold_set(args: argparse.Namespace) -> int:
    return _hold(args, hold=True)


def hold_clear(args: argparse.Namespace) -> int:
    return _hold(args, hold=False)


def expire(args: argparse.Namespace) -> int:
    count = _run(lambda rt: retention.expire(rt, actor=OPERATOR))
    print(f"crypto-shredded {count} thread(s) past retention")
    return 0


def check_keys(args: argparse.Namespace) -> int:
    found = _run(keys.problems)
    if found:
        raise CommandError("; ".join(found))
    print("every stored thread key opens with this keyring")
    return 0


def rewrap(args: argparse.Namespace) -> int:
    done = _run(lambda rt: keys.rewrap_all(rt, actor=OPERATOR))
    print(f"re-wrapped {done.rewrapped} thread data key(s) under {done.kek_id}")
    return 0


def export_patient(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise CommandError(f"{args.out} already exists; refusing to overwrite it")
    archive = _run(lambda rt: export.for_operator(rt, args.patient, actor=OPERATOR))
    # Owner-only from the start: the file holds decrypted messages.
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(archive.content)
    print(f"wrote {args.out} (mode 0600)")
    return 0
