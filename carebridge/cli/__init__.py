"""``carebridge``: the operator's command line. One module per command group."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from sqlalchemy.exc import SQLAlchemyError

from carebridge.cli import (
    accounts,
    audit,
    clients,
    db,
    keys,
    messaging,
    notifications,
    roster,
    serve,
    staff,
    webhooks,
    worker,
)
from carebridge.cli.common import CommandError
from carebridge.db import DatabaseError, describe_error
from carebridge.keyring import KeyringError
from carebridge.settings import ConfigError

COMMAND_GROUPS = (
    serve,
    worker,
    db,
    keys,
    audit,
    accounts,
    roster,
    clients,
    messaging,
    staff,
    notifications,
    webhooks,
)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the problem and where to read more.
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="carebridge",
        description="Patient identity broker with secure messaging.",
        epilog="Settings come from CAREBRIDGE_* environment variables (docs/configuration.md).",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
    except (ConfigError, KeyringError) as exc:
        print(f"carebridge: error: {exc}", file=sys.stderr)
        return 2
    except (CommandError, DatabaseError) as exc:
        print(f"carebridge: error: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(f"carebridge: error: database: {describe_error(exc)}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
