"""``carebridge notifications``: the outbox at a glance, retries, the SMS opt-out list.

Nothing here prints a phone number or a message; numbers are read from standard input
(never arguments: they would land in the shell history and the process list).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from carebridge.cli.common import CommandError, add_parser, require_current_schema, runtime
from carebridge.utc import utcnow
from sms import operations, phone


def register(commands: Any) -> None:
    group = add_parser(commands, "notifications", "SMS and voice notifications (sms/).")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_parser(
        sub, "status", "Counts by state and by the dispatcher's reason; stranded sends."
    ).set_defaults(handler=show_status)
    show_command = add_parser(
        sub, "show", "One notification: state, the dispatcher's decision and reason, attempts."
    )
    show_command.add_argument("notification_id", metavar="NOTIFICATION_ID")
    show_command.set_defaults(handler=show)
    retry_command = add_parser(
        sub,
        "retry",
        "Put a failed, undelivered or suppressed notification back in the outbox; the "
        "dispatcher decides again with the patient's current preferences.",
    )
    retry_command.add_argument("notification_id", metavar="NOTIFICATION_ID")
    retry_command.set_defaults(handler=retry)
    optouts = add_parser(sub, "optouts", "The SMS opt-out list (STOP and its kin).")
    optouts_sub = optouts.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_parser(optouts_sub, "count", "Listed numbers by source.").set_defaults(handler=optout_count)
    add_parser(
        optouts_sub, "add", "List the number read from standard input (no SMS to it)."
    ).set_defaults(handler=optout_add)
    add_parser(
        optouts_sub,
        "remove",
        "Take the number read from standard input off our list (only on the person's "
        "request; a carrier STOP still holds until they text START).",
    ).set_defaults(handler=optout_remove)


def show_status(args: argparse.Namespace) -> int:
    rt = runtime()
    try:
        require_current_schema(rt)
        result = operations.status(rt, utcnow())
    finally:
        rt.close()
    print("state:")
    for state, count in sorted(result.by_state.items()):
        print(f"  {state:<12} {count}")
    print("reason:")
    for reason, count in sorted(result.by_reason.items()):
        print(f"  {reason:<18} {count}")
    oldest = result.oldest_due.isoformat() if result.oldest_due else "-"
    print(f"oldest pending since: {oldest}")
    print(f"sends awaiting reconciliation: {result.stale_sending}")
    return 0


def show(args: argparse.Namespace) -> int:
    rt = runtime()
    try:
        require_current_schema(rt)
        found = operations.detail(rt, args.notification_id)
    finally:
        rt.close()
    if found is None:
        raise CommandError("no notification has this ID")
    row = found.notification
    print(f"notification: {row.id}  kind: {row.kind}  patient: {row.patient_id}")
    print(f"state: {row.state}  decision: {row.decision or '-'}  reason: {row.reason or '-'}")
    print(f"channel: {row.channel or '-'}  delivery: {row.delivery_status or '-'}")
    print(f"attempts: {row.attempts}  error code: {row.error_code or '-'}")
    for attempt in found.attempts:
        started = attempt.started_at.isoformat() if attempt.started_at else "-"
        print(
            f"  {attempt.id}  {attempt.channel:<5} {attempt.status:<10} {started}"
            f"  code {attempt.error_code or '-'}  answered {attempt.answered_by or '-'}"
        )
    return 0


def retry(args: argparse.Namespace) -> int:
    notification_id: str = args.notification_id
    if not notification_id.startswith("ntf_"):
        raise CommandError("a notification ID looks like ntf_...")
    rt = runtime()
    try:
        require_current_schema(rt)
        former = operations.retry(rt, notification_id, actor="operator:cli", now=utcnow())
    finally:
        rt.close()
    if former is None:
        raise CommandError("no failed, undelivered or suppressed notification has this ID")
    print(f"{notification_id}: {former} -> pending")
    return 0


def optout_count(args: argparse.Namespace) -> int:
    rt = runtime()
    try:
        require_current_schema(rt)
        counts = operations.opt_out_counts(rt)
    finally:
        rt.close()
    for source, count in sorted(counts.items()):
        print(f"{source:<10} {count}")
    print(f"{'total':<10} {sum(counts.values())}")
    return 0


def _number_from_stdin() -> str:
    raw = getpass.getpass("Phone number: ") if sys.stdin.isatty() else sys.stdin.readline()
    try:
        return phone.normalize(raw, "US")
    except phone.InvalidNumberError:
        if raw.strip().startswith("+") and raw.strip()[1:].isdigit():
            return raw.strip()
        raise CommandError("standard input must hold one phone number in E.164 form") from None


def _set(listed: bool) -> int:
    number = _number_from_stdin()
    rt = runtime()
    try:
        require_current_schema(rt)
        changed = operations.set_opt_out(
            rt, number, listed=listed, actor="operator:cli", now=utcnow()
        )
    finally:
        rt.close()
    state = "listed" if listed else "not listed"
    print(f"number {state}" + ("" if changed else " (no change)"))
    return 0


def optout_add(args: argparse.Namespace) -> int:
    return _set(True)


def optout_remove(args: argparse.Namespace) -> int:
    return _set(False)
