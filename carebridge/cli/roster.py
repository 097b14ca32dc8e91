"""``carebridge roster``: the eligibility roster (import, counts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from carebridge.cli.common import CommandError, add_parser, require_current_schema, runtime
from identity.roster import importer
from identity.roster.csv_format import FIELDS, RowError


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


class _Progress:
    """A ``\\r`` row counter on a terminal; nothing when stderr is a file or a pipe."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.active = stream.isatty()
        self.shown = False

    def rows(self, count: int) -> None:
        if self.active:
            self.stream.write(f"\rroster import: {count:,} rows")
            self.stream.flush()
            self.shown = True

    def error(self, error: RowError) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.shown = False
        print(error, file=self.stream)

    def done(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.shown = False


def import_file(args: argparse.Namespace) -> int:
    try:
        importer.check_source(args.source)
    except importer.SourceError as exc:
        raise CommandError(f"--source: {exc}") from None
    progress = _Progress(sys.stderr)
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
        )
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
