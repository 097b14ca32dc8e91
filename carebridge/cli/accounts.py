"""``carebridge accounts``: operator actions on patient accounts.

An account is named by its email address, read from standard input (never an argument:
it must not land in the shell history or the process list), or by ``--account-id`` (an
opaque ID, fine on the command line; the only name an account that signs in through a
provider has).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from carebridge import wiring
from carebridge.cli.common import CommandError, add_parser, require_current_schema, runtime
from carebridge.runtime import Runtime
from identity import accounts, recovery
from identity.flows import delete_account, mfa, signin, status
from identity.roster import staff

_ACCOUNT_ID_HELP = "the account's ID (acc_...) instead of an email address on standard input"


def register(commands: Any) -> None:
    group = add_parser(commands, "accounts", "Patient accounts.")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    unlock_command = add_parser(
        sub,
        "unlock",
        "Clear the sign-in locks (password and second factor) of the email address read "
        "from standard input, or of --account-id (after 100 failed attempts in a row they "
        "stay until cleared).",
    )
    unlock_command.set_defaults(handler=unlock)
    disable_command = add_parser(
        sub,
        "disable",
        "Disable the account of the email address read from standard input (or "
        "--account-id): it can no longer sign in, and all its sessions end.",
    )
    disable_command.set_defaults(handler=disable)
    enable_command = add_parser(
        sub,
        "enable",
        "Enable again the account of the email address read from standard input (or --account-id).",
    )
    enable_command.set_defaults(handler=enable)
    delete_command = add_parser(
        sub,
        "delete",
        "Delete the account of the email address read from standard input (or "
        "--account-id), for an erasure request made to the organization: its sign-in "
        "methods, sessions, app grants, contact points and link to the patient ID go; the "
        "messages stay with the care team, and the audit log stays.",
    )
    delete_command.add_argument(
        "--reason",
        required=True,
        help="why (the request's reference, how the requester was identified); never personal data",
    )
    delete_command.set_defaults(handler=delete)
    recover_command = add_parser(
        sub,
        "recover",
        "Start a staff-assisted recovery of a lost second factor for the account of the "
        "email address read from standard input (or --account-id): a one-time code goes "
        "to its verified address only (never printed here); the person enters it after "
        "their password, then the waiting period and notices apply.",
    )
    recover_command.add_argument(
        "--evidence",
        required=True,
        help="the evidence checked (e.g. photo ID seen in person); never its values",
    )
    recover_command.add_argument(
        "--reason", required=True, help="why (e.g. the ticket); never personal data"
    )
    recover_command.set_defaults(handler=recover)
    for command in (
        unlock_command,
        disable_command,
        enable_command,
        delete_command,
        recover_command,
    ):
        command.add_argument("--account-id", metavar="ACCOUNT_ID", help=_ACCOUNT_ID_HELP)


def _login_from_stdin() -> str:
    login = accounts.normalise_login(sys.stdin.readline())
    if accounts.login_problem(login):
        raise CommandError("standard input must hold one email address (or use --account-id)")
    return login


def _named(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(account ID, login): exactly one is given. Read before the database is opened, so
    bad input fails fast."""
    account_id: str | None = args.account_id
    if account_id is not None and not account_id.startswith("acc_"):
        raise CommandError("--account-id: an account ID looks like acc_...")
    return account_id, _login_from_stdin() if account_id is None else None


def _account_of(rt: Runtime, account_id: str | None, login: str | None) -> str:
    """The ID of the account named either way; CommandError when no account has the login."""
    if login is None:
        assert account_id is not None  # noqa: S101  (one of the two is given)
        return account_id
    with rt.sessions() as db:
        found = accounts.find_by_login(db, rt.keyring, login)
    if found is None:
        raise CommandError("no account has this email address")
    return found.account_id


def unlock(args: argparse.Namespace) -> int:
    account_id, login = _named(args)
    rt = runtime()
    try:
        require_current_schema(rt)
        if login is not None:
            failures = signin.unlock(rt, login)
            with rt.sessions() as db:
                found = accounts.find_by_login(db, rt.keyring, login)
            account_id = found.account_id if found is not None else None
        else:
            assert account_id is not None  # noqa: S101  (one of the two is given)
            counted = signin.unlock_account(rt, account_id)
            if counted is None:
                raise CommandError("no account has this ID")
            failures = counted
        if account_id is not None:
            failures += mfa.unlock_second_step(rt, account_id)
    finally:
        rt.close()
    print(f"sign-in locks cleared ({failures} failed attempts forgotten)")
    return 0


def _set_active(args: argparse.Namespace, active: bool) -> None:
    account_id, login = _named(args)
    rt = runtime()
    try:
        require_current_schema(rt)
        if login is not None:
            found = status.set_active(
                rt, login, active=active, followers=wiring.CareTeamFollowers()
            )
        else:
            assert account_id is not None  # noqa: S101  (one of the two is given)
            found = status.set_active_by_id(
                rt, account_id, active=active, followers=wiring.CareTeamFollowers()
            )
    finally:
        rt.close()
    if not found:
        raise CommandError(
            "no account has this email address" if login is not None else "no account has this ID"
        )


def disable(args: argparse.Namespace) -> int:
    _set_active(args, False)
    print("account disabled; its sessions and app grants have ended")
    return 0


def enable(args: argparse.Namespace) -> int:
    _set_active(args, True)
    print("account enabled")
    return 0


def delete(args: argparse.Namespace) -> int:
    account_id, login = _named(args)
    rt = runtime()
    try:
        require_current_schema(rt)
        account_id = _account_of(rt, account_id, login)
        try:
            erased = delete_account.erase(
                rt,
                wiring.identity_outward(rt),
                account_id,
                reason=args.reason,
                actor="operator",
            )
        except staff.StaffError as exc:
            raise CommandError(str(exc)) from None
    finally:
        rt.close()
    kept = f"; patient {erased.patient_id} and its messages stay" if erased.patient_id else ""
    notice = "a notice was sent" if erased.notice_sent else "no verified address: no notice"
    print(f"account {erased.account_id} deleted{kept} ({notice})")
    return 0


def recover(args: argparse.Namespace) -> int:
    account_id, login = _named(args)
    rt = runtime()
    try:
        require_current_schema(rt)
        account_id = _account_of(rt, account_id, login)
        try:
            recovery_id = recovery.start_staff(
                rt,
                wiring.identity_outward(rt).email,
                account_id,
                evidence=args.evidence,
                reason=args.reason,
                operator="operator",
            )
        except staff.StaffError as exc:
            raise CommandError(str(exc)) from None
        except recovery.RefusedError as exc:
            raise CommandError(f"recovery refused: {exc.refusal.value.replace('_', ' ')}") from None
        wait = rt.settings.recovery_wait_hours
    finally:
        rt.close()
    print(
        f"recovery {recovery_id} started for {account_id}: a one-time code was e-mailed to "
        f"its verified address (not shown here); after it is entered, {wait} h wait"
    )
    return 0
