"""The roster file: CSV, UTF-8 (a byte-order mark is fine), one header line.

Reading streams the file row by row; each row comes out either valid (:class:`RosterRow`)
or rejected with its reasons (:class:`RejectedRow`). No reason, error or ``repr`` ever
holds a value from the file: they name the line and the field only, so they can be
printed and logged. Problems with the file as a whole (encoding, header, broken CSV)
raise :class:`RosterFormatError`, which names the file and line.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO

FIELDS = ("first_name", "last_name", "dob", "ssn4", "zip", "group", "member_id", "status")
REQUIRED = ("first_name", "last_name", "dob", "ssn4", "zip", "member_id")
NAME_MAX = 100
MEMBER_ID_MAX = 64
_BOM = b"\xef\xbb\xbf"

_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_US_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")
_SSN4 = re.compile(r"[0-9]{4}")
_FULL_SSN = re.compile(r"[0-9]{3}[- ]?[0-9]{2}[- ]?[0-9]{4}")
_FEW_DIGITS = re.compile(r"[0-9]{1,3}")
_ZIP = re.compile(r"([0-9]{5})(?:-?([0-9]{4}))?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RosterFormatError(Exception):
    """The file cannot be read as a roster; one line naming the file (and line), no values."""


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


@dataclass(slots=True, repr=False)
class RosterRow:
    """One valid person. Its repr shows the line number only."""

    line: int
    first_name: str
    last_name: str
    dob: date
    ssn4: str
    zip: str
    group: str
    member_id: str
    terminated: bool

    def __repr__(self) -> str:
        return f"RosterRow(line={self.line})"


@dataclass(slots=True, repr=False)
class RejectedRow:
    """A row with at least one error; ``member_id`` when that field itself was valid."""

    line: int
    errors: list[RowError]
    member_id: str | None

    def __repr__(self) -> str:
        return f"RejectedRow(line={self.line}, errors={self.errors!r})"


def parse_columns(spec: str | None) -> dict[str, str]:
    """``dob=DateOfBirth,ssn4=SSN_Last4`` over the default header names (the field names)."""
    columns = {name: name for name in FIELDS}
    if not spec:
        return columns
    for item in spec.split(","):
        field, sep, header = item.partition("=")
        field, header = field.strip(), header.strip()
        if not sep or not header:
            raise RosterFormatError(f"--columns: '{item.strip()}' is not FIELD=HEADER")
        if field not in columns:
            raise RosterFormatError(
                f"--columns: unknown field '{field}' (fields: {', '.join(FIELDS)})"
            )
        columns[field] = header
    return columns


def _header_key(name: str) -> str:
    return name.strip().casefold()


def _decoded_lines(handle: Iterator[bytes], path: Path | str) -> Iterator[str]:
    for number, raw in enumerate(handle, 1):
        line = raw[len(_BOM) :] if number == 1 and raw.startswith(_BOM) else raw
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError:
            # Its message quotes bytes of the line: say only where.
            raise RosterFormatError(
                f"{path}: line {number}: not UTF-8 text (save the file as UTF-8); "
                "nothing was imported"
            ) from None


def _positions(header: list[str], columns: dict[str, str], path: Path | str) -> dict[str, int]:
    # Only the expected names are ever printed: a file without a header line would
    # otherwise have its first person's details quoted back.
    keys = [_header_key(name) for name in header]
    positions: dict[str, int] = {}
    missing: list[str] = []
    for field in FIELDS:
        wanted = _header_key(columns[field])
        found = [index for index, key in enumerate(keys) if key == wanted]
        if len(found) > 1:
            raise RosterFormatError(f"{path}: line 1: column '{columns[field]}' appears twice")
        if found:
            positions[field] = found[0]
        elif field in REQUIRED:
            missing.append(field if columns[field] == field else f"{field} ('{columns[field]}')")
    if missing:
        raise RosterFormatError(
            f"{path}: line 1: missing column(s): {', '.join(missing)} "
            "(see 'Eligibility roster' in docs/operations.md); nothing was imported"
        )
    return positions


def read(
    source: Path | IO[bytes], columns: dict[str, str], *, name: str | None = None
) -> Iterator[RosterRow | RejectedRow]:
    """Every data row of the file in order, valid or rejected. Blank lines are skipped.

    ``source`` is a path or an open binary file (an upload; left open); ``name`` is what
    messages call it (default: the path).
    """
    today = datetime.now(UTC).date()
    path: Path | str = name or (source if isinstance(source, Path) else "upload")
    try:
        handle = source.open("rb") if isinstance(source, Path) else nullcontext(source)
    except OSError as exc:
        raise RosterFormatError(f"{path}: cannot be read: {exc.strerror}") from None
    with handle as stream:
        reader = csv.reader(_decoded_lines(iter(stream), path), strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise RosterFormatError(f"{path}: empty file (a header line is expected)")
            positions = _positions(header, columns, path)
            width = len(header)
            for record in reader:
                if not record or record == [""]:
                    continue
                if len(record) != width:
                    error = RowError(
                        reader.line_num,
                        "row",
                        f"has {len(record)} fields, the header has {width}",
                    )
                    yield RejectedRow(reader.line_num, [error], None)
                    continue
                yield _validate(reader.line_num, record, positions, today)
        except csv.Error as exc:
            # csv's messages describe the syntax ("unexpected end of data"), not values.
            raise RosterFormatError(
                f"{path}: line {reader.line_num}: not valid CSV ({exc}); nothing was imported"
            ) from None


def _validate(
    line: int, record: list[str], positions: dict[str, int], today: date
) -> RosterRow | RejectedRow:
    def value(field: str) -> str:
        index = positions.get(field)
        return record[index].strip() if index is not None else ""

    errors: list[RowError] = []

    def check(field: str, reason: str | None) -> None:
        if reason is not None:
            errors.append(RowError(line, field, reason))

    first_name, last_name = value("first_name"), value("last_name")
    check("first_name", _text_problem(first_name, NAME_MAX, required=True))
    check("last_name", _text_problem(last_name, NAME_MAX, required=True))
    dob, reason = _parse_dob(value("dob"), today)
    check("dob", reason)
    ssn4 = value("ssn4")
    check("ssn4", _ssn4_problem(ssn4))
    zip_code, reason = _parse_zip(value("zip"))
    check("zip", reason)
    group = value("group")
    check("group", _text_problem(group, NAME_MAX, required=False))
    member_id = value("member_id")
    member_problem = _text_problem(member_id, MEMBER_ID_MAX, required=True)
    check("member_id", member_problem)
    status = value("status").casefold()
    if status not in ("", "active", "terminated"):
        check("status", "must be active or terminated (or empty for active)")
    if errors or dob is None or zip_code is None:
        return RejectedRow(line, errors, None if member_problem else member_id)
    return RosterRow(
        line=line,
        first_name=first_name,
        last_name=last_name,
        dob=dob,
        ssn4=ssn4,
        zip=zip_code,
        group=group,
        member_id=member_id,
        terminated=status == "terminated",
    )


def _text_problem(text: str, limit: int, *, required: bool) -> str | None:
    if not text:
        return "is required" if required else None
    if len(text) > limit:
        return f"longer than {limit} characters"
    if _CONTROL.search(text):
        return "contains control characters"
    return None


def _parse_dob(text: str, today: date) -> tuple[date | None, str | None]:
    if not text:
        return None, "is required"
    iso, us = _ISO_DATE.fullmatch(text), _US_DATE.fullmatch(text)
    if iso:
        year, month, day = (int(part) for part in iso.groups())
    elif us:
        month, day, year = (int(part) for part in us.groups())
    else:
        return None, "not a date (use YYYY-MM-DD or MM/DD/YYYY)"
    try:
        dob = date(year, month, day)
    except ValueError:
        return None, "not a real date"
    if dob > today:
        return None, "is in the future"
    if dob.year < 1900:
        return None, "is before 1900"
    return dob, None


def _ssn4_problem(text: str) -> str | None:
    if _SSN4.fullmatch(text):
        return None
    if not text:
        return "is required"
    if _FULL_SSN.fullmatch(text):
        return (
            "only the last four digits are needed: remove full Social Security numbers "
            "from the file"
        )
    if _FEW_DIGITS.fullmatch(text):
        return "must be exactly 4 digits (a spreadsheet may have dropped leading zeros)"
    return "must be exactly 4 digits"


def _parse_zip(text: str) -> tuple[str | None, str | None]:
    match = _ZIP.fullmatch(text)
    if match:
        five, four = match.groups()
        return (f"{five}-{four}" if four else five), None
    if not text:
        return None, "is required"
    if _FEW_DIGITS.fullmatch(text) or re.fullmatch(r"[0-9]{4}", text):
        return None, "must be 5 digits or ZIP+4 (a spreadsheet may have dropped a leading zero)"
    return None, "must be 5 digits or ZIP+4 (12345 or 12345-6789)"
