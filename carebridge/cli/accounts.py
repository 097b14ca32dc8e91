"""``carebridge accounts``: operator actions on patient accounts."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from carebridge.cli.common import CommandError, add_parser, require_current_schema, runtime
from identity import accounts
from identity.flows import mfa, signin


def register(commands: Any) -> None:
    group = add_parser(commands, "accounts", "Patient accounts.")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_parser(
        sub,
        "unlock",
        "Clear the sign-in locks (password and second factor) of the email address read "
        "from standard input (after 100 failed attempts in a row they stay until cleared).",
    ).set_defaults(handler=unlock)


def unlock(args: argparse.Namespace) -> int:
    # From standard input, not an argument: an email address must not land in the shell
    # history or the process list.
    login = accounts.normalise_login(sys.stdin.readline())
    if accounts.login_problem(login):
        raise CommandError("standard input must hold one email address")
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
