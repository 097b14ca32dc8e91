"""``carebridge accounts``: operator actions on patient accounts."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from carebridge.cli.common import CommandError, add_parser, require_current_schema, runtime
from identity import accounts
from identity.flows import mfa, signin, status


def register(commands: Any) -> None:
    group = add_parser(commands, "accounts", "Patient accounts.")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_parser(
        sub,
        "unlock",
        "Clear the sign-in locks (password and second factor) of the email address read "
        "from standard input (after 100 failed attempts in a row they stay until cleared).",
    ).set_defaults(handler=unlock)
    add_parser(
        sub,
        "disable",
        "Disable the account of the email address read from standard input: it can no "
        "longer sign in, and all its sessions end.",
    ).set_defaults(handler=disable)
    add_parser(
        sub,
        "enable",
        "Enable again the account of the email address read from standard input.",
    ).set_defaults(handler=enable)


def _login_from_stdin() -> str:
    # From standard input, not an argument: an email address must not land in the shell
    # history or the process list.
    login = accounts.normalise_login(sys.stdin.readline())
    if accounts.login_problem(login):
        raise CommandError("standard input must hold one email address")
    return login


def unlock(args: argparse.Namespace) -> int:
    login = _login_from_stdin()
    rt = runtime()
    try:
        require_current_schema(rt)
        failures = signin.unlock(rt, login)
        with rt.sessions() as db:
            found = accounts.find_by_login(db, rt.keyring, login)
        if found is not None:
            failures += mfa.unlock_second_step(rt, found.account_id)
    finally:
        rt.close()
    print(f"sign-in locks cleared ({failures} failed attempts forgotten)")
    return 0


def _set_active(active: bool) -> None:
    login = _login_from_stdin()
    rt = runtime()
    try:
        require_current_schema(rt)
        found = status.set_active(rt, login, active=active)
    finally:
        rt.close()
    if not found:
        raise CommandError("no account has this email address")


def disable(args: argparse.Namespace) -> int:
    _set_active(False)
    print("account disabled; its sessions have ended")
    return 0


def enable(args: argparse.Namespace) -> int:
    _set_active(True)
    print("account enabled")
    return 0
