"""``carebridge audit``: check the hash chain."""

from __future__ import annotations

import argparse
from typing import Any

from carebridge import audit as audit_log
from carebridge.cli.common import add_parser, require_current_schema, runtime


def register(commands: Any) -> None:
    group = add_parser(commands, "audit", "The hash-chained audit log.")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_parser(
        sub,
        "verify",
        "Link any records not yet chained, then walk the chain; exit 1 naming the first "
        "record that breaks it.",
    ).set_defaults(handler=verify)


def verify(args: argparse.Namespace) -> int:
    rt = runtime()
    try:
        require_current_schema(rt)
        audit_log.chain_all(rt.sessions)
        with rt.sessions() as session:
            result = audit_log.verify(session)
    finally:
        rt.close()
    if result.intact:
        waiting = f" ({result.pending} written since, not yet chained)" if result.pending else ""
        print(f"audit log intact: {result.records} records, head {result.head}{waiting}")
        return 0
    print(f"audit log broken at record {result.broken_at}: {result.reason}")
    return 1
