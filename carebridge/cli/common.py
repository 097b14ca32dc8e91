"""What the commands share: settings loading, the runtime, schema checks."""

from __future__ import annotations

import argparse
from typing import Any

from carebridge.migrate import current_revision
from carebridge.runtime import Runtime
from carebridge.settings import Role, load_settings

Subparsers = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CommandError(Exception):
    """An operation failed; the message is one line for the operator."""


def add_parser(commands: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help_text, description=help_text
    )
    return parser


def runtime() -> Runtime:
    return Runtime.build(load_settings(), Role.CLI)


def require_current_schema(rt: Runtime) -> None:
    if rt.schema_state() == "behind":
        current = current_revision(rt.engine)
        raise CommandError(
            f"database schema is at {current or 'nothing'}, this release needs "
            f"{rt.expected_revision}: run 'carebridge db upgrade'"
        )
