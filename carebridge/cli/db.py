"""``carebridge db``: schema migrations."""

from __future__ import annotations

import argparse
from typing import Any

from carebridge import migrate
from carebridge.cli.common import add_parser, runtime
from carebridge.db import safe_url


def register(commands: Any) -> None:
    group = add_parser(commands, "db", "Database schema migrations.")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_parser(sub, "upgrade", "Migrate the database to this release's schema.").set_defaults(
        handler=upgrade
    )
    add_parser(sub, "current", "Show the database's schema revision.").set_defaults(handler=current)


def upgrade(args: argparse.Namespace) -> int:
    rt = runtime()
    try:
        migrate.upgrade(rt.engine, settings=rt.settings)
        print(
            f"database {safe_url(str(rt.engine.url))} is at {migrate.current_revision(rt.engine)}"
        )
    finally:
        rt.close()
    return 0


def current(args: argparse.Namespace) -> int:
    rt = runtime()
    try:
        revision = migrate.current_revision(rt.engine)
        state = "current" if revision == rt.expected_revision else "needs 'carebridge db upgrade'"
        print(f"{revision or 'empty'} (this release: {rt.expected_revision}; {state})")
    finally:
        rt.close()
    return 0
