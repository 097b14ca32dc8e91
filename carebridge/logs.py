"""Structured JSON logs with request IDs, scrubbed of PHI-shaped values.

The redaction filter sits on the handler, so it sees every record that is written,
whichever logger (ours, uvicorn's, SQLAlchemy's) produced it. It is a safety net, not
permission: code still logs IDs and generic text only (ARCHITECTURE.md invariant 1).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Named fields and email addresses: applied to the whole text, identifiers included (a
# token=<32 hex> is still a token).
_FIELDS: list[tuple[re.Pattern[str], str]] = [
    (
        # Not \b before the name: "_" is a word character, and client_secret=, access_token=
        # and patient_dob= must match. The optional quote catches JSON and dict reprs; the
        # optional scheme keeps "Authorization: Bearer <token>" from redacting only "Bearer".
        re.compile(
            r"(?i)(?<![a-z0-9])(ssn\w*|last4|dob|date_?of_?birth|birth_?date|password|passwd|"
            r"secret|token|authorization|phone\w*|email)([\"']?\s*[=:]\s*)((?:bearer|basic)\s+)?"
            r"(\"[^\"]*\"|'[^']*'|[^\s,;&]+)"
        ),
        r"\1\2\3[redacted]",
    ),
    (re.compile(r"[\w.%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[email]"),
    # PostgreSQL's errors quote values: a key or a failing row in DETAIL, a parameter in
    # CONTEXT, the text a type refused. SQLAlchemy's engines hide bound parameters
    # (carebridge.db), but the server's own message still carries these.
    (re.compile(r"(?m)^(DETAIL|CONTEXT):.*$"), r"\1: [redacted]"),
    (
        re.compile(r"(invalid input (?:syntax|value) for (?:type|enum) [\w ]+): \"[^\n]*?\""),
        r"\1: [redacted]",
    ),
]

# Digit shapes: applied around identifiers. Order matters: the most specific shapes first,
# so "123-45-6789" is an SSN, not a phone.
_SHAPES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b\d{3}[- ]\d{2}[- ]\d{4}\b"), "[ssn]"),
    (re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"), "[date]"),
    (re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"), "[date]"),
    (
        re.compile(r"(?:\+?\b1[\s.-]?)?(?:\(\d{3}\)\s?|\b\d{3}[\s.-]?)\d{3}[\s.-]?\d{4}\b"),
        "[phone]",
    ),
    (re.compile(r"\+\d{8,15}\b"), "[phone]"),
    # Bare digit runs: 8 (YYYYMMDD), 9 (SSN) or 10+ (phone) digits.
    (re.compile(r"\b\d{8,15}\b"), "[number]"),
]

# Identifiers the code logs on purpose (request IDs, UUIDs): their digit runs are neither
# phone numbers nor SSNs, and a mangled ID is useless to whoever reads the log.
_IDENTIFIER = re.compile(
    r"\b(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32})\b"
)

# LogRecord attributes that are not "extra" fields passed by the caller (uvicorn adds a
# terminal-coloured copy of its message that a JSON log has no use for).
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message"}
)


def _substitute(patterns: list[tuple[re.Pattern[str], str]], text: str) -> str:
    for pattern, replacement in patterns:
        text = pattern.sub(replacement, text)
    return text


# Every pattern above needs a digit, an "@" or a name followed by "=" or ":". Most of
# what is logged ("/healthz", "GET") has none: skip the patterns for it (the access log
# runs this for every request).
_CANNOT_MATCH = re.compile(r"[^0-9@=:]*")


def redact(text: str) -> str:
    if _CANNOT_MATCH.fullmatch(text):
        return text
    text = _substitute(_FIELDS, text)
    # Identifiers start and end at a word boundary, so redacting the text between them
    # sees the same boundaries as redacting the whole.
    parts: list[str] = []
    end = 0
    for match in _IDENTIFIER.finditer(text):
        parts += [_substitute(_SHAPES, text[end : match.start()]), match.group()]
        end = match.end()
    parts.append(_substitute(_SHAPES, text[end:]))
    return "".join(parts)


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(key)): _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        # A number can be a phone number or an SSN; it stays a number only if it is neither
        # (under 8 digits, no shape above can match it).
        if value is None or isinstance(value, bool) or abs(value) < 10_000_000:
            return value
        text = str(value)
        return value if redact(text) == text else redact(text)
    # Anything else (an exception, a date, an object) is written as its str(): redact that.
    return redact(str(value))


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            # A filter's exception reaches the logging call: a malformed call must not fail
            # the request, nor have logging print its unredacted arguments to stderr.
            message = f"{record.msg} [unformattable log arguments dropped]"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        # The traceback is now text; don't let a formatter render the raw one again.
        record.exc_info = None
        for key in list(vars(record)):
            if key not in _STANDARD_ATTRS:
                setattr(record, key, _redact_value(getattr(record, key)))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own handlers would bypass the filter; route everything through the root.
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # uvicorn's access line carries the query string and client address; ours does not.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    # Alembic narrates every migration step at INFO; operators need only problems.
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))
    # httpx writes every request's full URL at INFO: a webhook receiver's query string
    # may hold the app's own token, and the address it resolved to is not for the log.
    logging.getLogger("httpx").setLevel(max(root.level, logging.WARNING))
