"""``carebridge notifications``: the outbox at a glance, retries, the SMS opt-out list.

The one place operators look: sms's notifications (its ledger: ``ntf_`` IDs) and every
other channel's rows of the outbox (``obx_`` IDs: one-time codes, e-mail), their dead
letters, and putting one back. Nothing here prints a phone number, an address or a
message; numbers are read from standard input (never arguments: they would land in the
shell history and the process list).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from carebridge.cli.common import CommandError, add_parser, require_current_schema, runtime
from carebridge.outbox import operations as outbox_operations
from carebridge.utc import utcnow
from sms import operations, phone

NOTIFICATION_PREFIX = "ntf_"
OUTBOX_PREFIX = "obx_"


def register(commands: Any) -> None:
    group = add_parser(
        commands, "notifications", "The outbox: SMS and voice notifications, codes, e-mail."
    )
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_parser(
        sub,
        "status",
        "Counts by state and by the dispatcher's reason; the outbox by channel; stranded "
        "sends; dead letters.",
    ).set_defaults(handler=show_status)
    add_parser(
        sub, "dead", "The outbox's dead letters, newest first (IDs and reasons only)."
    ).set_defaults(handler=show_dead)
    show_command = add_parser(
        sub,
        "show",
        "One notification (state, the dispatcher's decision and reason, attempts) or "
        "outbox row (obx_...).",
    )
    show_command.add_argument("notification_id", metavar="NOTIFICATION_ID")
    show_command.set_defaults(handler=show)
    retry_command = add_parser(
        sub,
        "retry",
        "Put a failed, undelivered or suppressed notification back in the outbox; the "
        "dispatcher decides again with the patient's current preferences. An outbox "
        "dead letter (obx_...) is due again with a fresh count of attempts.",
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
        now = utcnow()
        result = operations.status(rt, now)
        rows = outbox_operations.status(rt, now)
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
    print("outbox (channel, state):")
    for (channel, state), count in sorted(rows.by_channel_state.items()):
        print(f"  {channel:<8} {state:<10} {count}")
    oldest = rows.oldest_due.isoformat() if rows.oldest_due else "-"
    print(f"outbox oldest due: {oldest}")
    print(f"outbox leases run out: {rows.stale_sending}")
    dead = sum(n for (_, state), n in rows.by_channel_state.items() if state == "dead")
    print(f"outbox dead letters: {dead}")
    return 0


def show_dead(args: argparse.Namespace) -> int:
    rt = runtime()
    try:
        require_current_schema(rt)
        rows = outbox_operations.dead_letters(rt)
    finally:
        rt.close()
    for row in rows:
        print(
            f"{row.id}  {row.channel:<8} {row.kind:<16} attempts {row.attempts}"
            f"  {row.last_error or '-'}  created {row.created_at.isoformat()}"
        )
    print(f"{len(rows)} dead letters" + (" (the newest 50)" if len(rows) == 50 else ""))
    return 0


def _show_outbox_row(message_id: str) -> int:
    rt = runtime()
    try:
        require_current_schema(rt)
        row = outbox_operations.detail(rt, message_id)
    finally:
        rt.close()
    if row is None:
        raise CommandError("no outbox row has this ID")
    ids = ", ".join(f"{key}={value}" for key, value in sorted(row.payload.items())) or "-"
    print(f"outbox: {row.id}  channel: {row.channel}  kind: {row.kind}  ids: {ids}")
    print(f"state: {row.state}  attempts: {row.attempts}  last error: {row.last_error or '-'}")
    print(f"created: {row.created_at.isoformat()}  due: {row.due_at.isoformat()}")
    return 0


def show(args: argparse.Namespace) -> int:
    if str(args.notification_id).startswith(OUTBOX_PREFIX):
        return _show_outbox_row(args.notification_id)
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
    if notification_id.startswith(OUTBOX_PREFIX):
        return _retry_outbox_row(notification_id)
    if not notification_id.startswith(NOTIFICATION_PREFIX):
        raise CommandError("a notification ID looks like ntf_... (an outbox row's obx_...)")
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


def _retry_outbox_row(message_id: str) -> int:
    rt = runtime()
    try:
        require_current_schema(rt)
        former = outbox_operations.retry(rt, message_id, actor="operator:cli", now=utcnow())
    finally:
        rt.close()
    if former is None:
        raise CommandError("no dead letter has this ID")
    print(f"{message_id}: {former} -> pending")
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
