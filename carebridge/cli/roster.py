"""``carebridge roster``: the eligibility roster (import, counts) and staff operations on
patient IDs (activation codes, unlink, re-verify, look-up), each with a stated reason."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from carebridge import wiring
from carebridge.cli.common import CommandError, add_parser, require_current_schema, runtime
from carebridge.runtime import Runtime
from carebridge.wiring import CareTeamsFollowRoster
from identity.flows import activate, verify
from identity.roster import importer, staff
from identity.roster.csv_format import FIELDS, RowError

_T = TypeVar("_T")


def register(commands: Any) -> None:
    group = add_parser(commands, "roster", "The eligibility roster.")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    do_import = add_parser(
        sub,
        "import",
        "Import a roster CSV for a source: all or nothing unless --skip-invalid; a full "
        "import makes the source's members missing from the file ineligible.",
    )
    do_import.add_argument("file", type=Path, metavar="FILE")
    do_import.add_argument("--source", required=True, help="the organization's roster name")
    do_import.add_argument(
        "--skip-invalid", action="store_true", help="import the valid rows, list the others"
    )
    do_import.add_argument(
        "--partial",
        action="store_true",
        help="update only the rows in the file; leave the source's other members as they are",
    )
    do_import.add_argument(
        "--columns",
        metavar="FIELD=HEADER,...",
        help=f"header names other than the field names ({', '.join(FIELDS)})",
    )
    do_import.set_defaults(handler=import_file)
    show = add_parser(sub, "stats", "Counts for one source (no personal data).")
    show.add_argument("--source", required=True)
    show.set_defaults(handler=stats)
    _staff_command(
        sub,
        "activation-code",
        "Issue a one-time activation code for an eligible, unlinked patient ID (shown once; "
        "earlier unused codes for the patient stop working).",
        activation_code,
    )
    _staff_command(
        sub,
        "unlink",
        "Unlink a patient ID from its account (the account keeps its sign-in).",
        unlink,
    )
    _staff_command(
        sub,
        "reverify",
        "Unlink a patient ID and end its unused activation codes: the account must verify again.",
        reverify,
    )
    _staff_command(
        sub,
        "lookup",
        "Show a patient's roster details (names, ZIP, group, eligibility, linked or not) "
        "and activation codes (usable, used, expired, or voided after wrong dates of birth).",
        lookup,
    )
    unlock = add_parser(
        sub,
        "activation-unlock",
        "Clear an account's activation lock (5 wrong codes or dates of birth lock it).",
    )
    unlock.add_argument("account_id", metavar="ACCOUNT_ID")
    unlock.add_argument("--reason", required=True, help=_REASON_HELP)
    unlock.set_defaults(handler=activation_unlock)
    verify_unlock = add_parser(
        sub,
        "verify-unlock",
        "Clear an account's verification lock (5 failed DOB + SSN last 4 attempts lock it "
        "until staff review).",
    )
    verify_unlock.add_argument("account_id", metavar="ACCOUNT_ID")
    verify_unlock.add_argument("--reason", required=True, help=_REASON_HELP)
    verify_unlock.set_defaults(handler=verification_unlock)


_REASON_HELP = "why (kept with the record; an explanation, never personal data)"


def _staff_command(sub: Any, name: str, help_text: str, handler: Any) -> None:
    parser = add_parser(sub, name, help_text + " Requires --reason; audited.")
    parser.add_argument("patient_id", metavar="PATIENT_ID")
    parser.add_argument("--reason", required=True, help=_REASON_HELP)
    parser.set_defaults(handler=handler)


def _staff(operation: Callable[[Runtime], _T]) -> _T:
    rt = runtime()
    try:
        require_current_schema(rt)
        return operation(rt)
    except staff.StaffError as exc:
        raise CommandError(str(exc)) from None
    finally:
        rt.close()


def activation_code(args: argparse.Namespace) -> int:
    issued = _staff(lambda rt: staff.issue_code(rt, args.patient_id, reason=args.reason))
    print(f"activation code for {args.patient_id}: {issued.code}")
    print(f"expires {issued.expires_at:%Y-%m-%d %H:%M} UTC; it is shown only this once")
    return 0


def unlink(args: argparse.Namespace) -> int:
    account_id = _staff(
        lambda rt: staff.unlink(
            rt, args.patient_id, reason=args.reason, followers=wiring.CareTeamFollowers()
        )
    )
    print(f"patient {args.patient_id} unlinked from account {account_id}")
    return 0


def reverify(args: argparse.Namespace) -> int:
    account_id = _staff(
        lambda rt: staff.unlink(
            rt,
            args.patient_id,
            reason=args.reason,
            action="roster.reverify",
            followers=wiring.CareTeamFollowers(),
        )
    )
    print(f"patient {args.patient_id} unlinked from account {account_id}; it must verify again")
    return 0


def lookup(args: argparse.Namespace) -> int:
    found = _staff(lambda rt: staff.lookup(rt, args.patient_id, reason=args.reason))
    print(f"patient ID:  {found.patient_id}")
    print(f"name:        {found.first_name} {found.last_name}")
    print(f"ZIP:         {found.zip}")
    print(f"group:       {found.group or '-'}")
    print(f"source:      {found.source} (member ID {found.member_id})")
    print(f"eligible:    {'yes' if found.eligible else 'no'}")
    print(f"linked:      {'yes' if found.linked else 'no'}")
    now = datetime.now(UTC)
    for code in found.codes:
        print(f"activation code {code.id}: {_code_line(code, now)}")
    return 0


def _code_line(code: staff.CodeState, now: datetime) -> str:
    state = code.state(now)
    issued = f"issued {code.created_at:%Y-%m-%d %H:%M} UTC by {code.created_by}"
    failures = f"{code.failures} wrong date{'' if code.failures == 1 else 's'} of birth"
    if state == "voided" and code.voided_at is not None:
        return (
            f"VOIDED {code.voided_at:%Y-%m-%d %H:%M} UTC after {failures} "
            f"(issue a new code if the patient is who they say); {issued}"
        )
    if state == "used" and code.used_at is not None:
        return f"used {code.used_at:%Y-%m-%d %H:%M} UTC; {issued}"
    until = f"{code.expires_at:%Y-%m-%d %H:%M} UTC"
    ends = f"expired {until}" if state == "expired" else f"usable until {until}"
    return f"{ends}, {failures}; {issued}"


def activation_unlock(args: argparse.Namespace) -> int:
    failures = _staff(lambda rt: activate.unlock(rt, args.account_id, reason=args.reason))
    print(f"activation lock cleared for account {args.account_id} ({failures} failures forgotten)")
    return 0


def verification_unlock(args: argparse.Namespace) -> int:
    failures = _staff(lambda rt: verify.unlock(rt, args.account_id, reason=args.reason))
    print(
        f"verification lock cleared for account {args.account_id} ({failures} failures forgotten)"
    )
    return 0


def count_rows(path: Path) -> int | None:
    """Data lines in a CSV file (lines after the header), for the progress bar's total;
    a quoted field holding a line break makes it a slight overestimate."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
            if size:
                handle.seek(-1, 2)
                if handle.read(1) != b"\n":
                    lines += 1  # a last line without its line break
    except OSError:
        return None
    return max(lines - 1, 0)


class _Progress:
    """rich's progress bar on a terminal (rows counted, nothing of their content); nothing
    when the stream is a file or a pipe. Row errors are printed above the bar."""

    def __init__(self, stream: TextIO, total: int | None = None) -> None:
        self.stream = stream
        self.total = total
        self.bar: Progress | None = None
        if stream.isatty():
            counted = (
                f"{{task.fields[rows]:,}} of ~{total:,} rows"
                if total
                else "{task.fields[rows]:,} rows"
            )
            self.bar = Progress(
                TextColumn("roster import"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn(counted),
                console=Console(file=stream),
                # Drawn when the importer reports (every batch), not from a thread; the
                # process's own output is left alone (errors go through rich's console).
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.task = self.bar.add_task("roster import", total=total, rows=0)
        self.shown = False

    def rows(self, count: int) -> None:
        if self.bar is None:
            return
        if not self.shown:
            self.bar.start()
            self.shown = True
        # Never 100% before the end: the total can overestimate (quoted line breaks).
        done = min(count, self.total * 0.99) if self.total else count
        self.bar.update(self.task, completed=done, rows=count, refresh=True)

    def error(self, error: RowError) -> None:
        if self.bar is not None:
            self.bar.console.print(str(error), markup=False, highlight=False, soft_wrap=True)
        else:
            print(error, file=self.stream)

    def done(self) -> None:
        if self.bar is not None and self.shown:
            self.bar.stop()
            self.shown = False


def import_file(args: argparse.Namespace) -> int:
    try:
        importer.check_source(args.source)
    except importer.SourceError as exc:
        raise CommandError(f"--source: {exc}") from None
    total = count_rows(Path(args.file)) if sys.stderr.isatty() else None
    progress = _Progress(sys.stderr, total)
    rt = runtime()
    try:
        require_current_schema(rt)
        result = importer.import_roster(
            rt,
            args.file,
            source=args.source,
            partial=args.partial,
            skip_invalid=args.skip_invalid,
            columns=args.columns,
            on_error=progress.error,
            on_progress=progress.rows,
            followers=wiring.CareTeamFollowers(),
        )
        # The care teams fed by this source follow it (messaging, through the wiring).
        CareTeamsFollowRoster(rt).roster_imported(source=args.source)
    except importer.ImportRefusedError as exc:
        raise CommandError(str(exc)) from None
    finally:
        progress.done()
        rt.close()
    print(
        f"roster import {result.import_id} ({result.source}, {result.mode}): "
        f"{result.rows} rows, {result.imported} new, {result.updated} updated, "
        f"{result.rejected} rejected, {result.ineligible} made ineligible"
    )
    return 0


def stats(args: argparse.Namespace) -> int:
    try:
        importer.check_source(args.source)
    except importer.SourceError as exc:
        raise CommandError(f"--source: {exc}") from None
    rt = runtime()
    try:
        require_current_schema(rt)
        found = importer.stats(rt, args.source)
    finally:
        rt.close()
    if found is None:
        raise CommandError(f"no roster has been imported for source '{args.source}'")
    print(
        f"source {args.source}: {found.members} members, {found.eligible} eligible, "
        f"{found.members - found.eligible} ineligible ({found.terminated} terminated), "
        f"{found.linked} linked to accounts"
    )
    last = found.last_import
    if last is not None:
        print(
            f"last import {last.id} at {last.started_at:%Y-%m-%d %H:%M:%S}: {last.mode}, "
            f"{last.outcome}, {last.rows} rows, {last.imported} new, {last.updated} updated, "
            f"{last.rejected} rejected, {last.ineligible} made ineligible"
        )
    return 0
