"""Structured JSON logs: request IDs, and no PHI-shaped value in any part of a record."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import httpx
import pytest

from carebridge.logs import (
    JsonFormatter,
    RedactingFilter,
    configure_logging,
    redact,
    request_id_var,
)

Lines = Callable[[], list[dict[str, Any]]]

# Each shape the issue names, with text around it as a log message would have it.
PHI = {
    "e164 phone": "+15551234567",
    "us phone with parentheses": "(555) 123-4567",
    "us phone with dashes": "555-123-4567",
    "us phone with dots": "555.123.4567",
    "us phone with country code": "1-555-123-4567",
    "bare 10-digit phone": "5551234567",
    "email": "jane.doe+clinic@example.org",
    "ssn with dashes": "123-45-6789",
    "ssn with spaces": "123 45 6789",
    "bare ssn": "123456789",
    "iso dob": "1980-01-31",
    "us dob": "01/31/1980",
    "short us dob": "1/31/80",
    "compact dob": "19800131",
}

# What the code logs on purpose, and must still read the same after redaction.
KEPT = {
    "request id": "3f2a9c0d8e7b6a5f4e3d2c1b0a998877",
    "all-digit request id": "12345678901234567890123456789012",
    "uuid": "123e4567-e89b-12d3-a456-426614174000",
    "uuid with all-digit groups": "12345678-1234-4234-8234-123456789012",
    "duration": "took 12.34 ms",
    "long duration": "took 1234.5 ms",
    "status code": "answered 503 after 404 and 200",
    "route template": "GET /threads/{thread_id}/messages/{message_id}",
    "counts": "retrying in 30 s, attempt 2 of 5",
}


@pytest.fixture
def lines() -> Iterator[Lines]:
    """Records written through the project's filter and formatter, parsed."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.propagate = True


log = logging.getLogger("test.logs")


@pytest.mark.parametrize("value", PHI.values(), ids=PHI.keys())
def test_phi_shape_is_scrubbed_from_message(lines: Lines, value: str) -> None:
    log.info(f"lookup for {value} failed")
    [entry] = lines()
    assert value not in json.dumps(entry)
    assert entry["msg"].startswith("lookup for [")
    assert entry["msg"].endswith("] failed")


@pytest.mark.parametrize("value", PHI.values(), ids=PHI.keys())
def test_phi_shape_is_scrubbed_from_args(lines: Lines, value: str) -> None:
    log.warning("patient %s, caller %r", value, value)
    [entry] = lines()
    assert value not in json.dumps(entry)


@pytest.mark.parametrize("value", PHI.values(), ids=PHI.keys())
def test_phi_shape_is_scrubbed_from_extra_fields(lines: Lines, value: str) -> None:
    log.info("import row", extra={"field": value, "nested": {"rows": [value, (value,)]}})
    [entry] = lines()
    assert value not in json.dumps(entry)
    assert entry["msg"] == "import row"


def test_phi_used_as_a_key_in_an_extra_field_is_scrubbed(lines: Lines) -> None:
    log.info("matches", extra={"by_contact": {"jane@example.org": 2, "555-123-4567": 1}})
    [entry] = lines()
    assert entry["by_contact"] == {"[email]": 2, "[phone]": 1}


@pytest.mark.parametrize("value", PHI.values(), ids=PHI.keys())
def test_phi_shape_is_scrubbed_from_exception_text(lines: Lines, value: str) -> None:
    try:
        raise ValueError(f"no patient matches {value}")
    except ValueError:
        log.exception("lookup failed")
    [entry] = lines()
    assert "ValueError: no patient matches [" in entry["exc"]
    assert "Traceback" in entry["exc"]
    assert value not in json.dumps(entry)


def test_numeric_extra_field_holding_a_phone_number_is_scrubbed(lines: Lines) -> None:
    log.info("sms queued", extra={"to": 5551234567, "ssn": 123456789})
    [entry] = lines()
    assert "5551234567" not in json.dumps(entry)
    assert "123456789" not in json.dumps(entry)


def test_non_string_extra_field_is_scrubbed_by_its_text(lines: Lines) -> None:
    # The formatter writes str() of what JSON cannot hold: that text is scrubbed too.
    log.info(
        "sign-up rejected",
        extra={"error": ValueError("jane@example.org taken"), "dob": date(1980, 1, 31)},
    )
    [entry] = lines()
    assert "jane@example.org" not in json.dumps(entry)
    assert "1980" not in json.dumps(entry)


def test_numbers_and_flags_in_extra_fields_keep_their_type(lines: Lines) -> None:
    log.info(
        "request",
        extra={"status": 503, "duration_ms": 12.34, "cached": False, "retries": None},
    )
    [entry] = lines()
    assert entry["status"] == 503
    assert entry["duration_ms"] == 12.34
    assert entry["cached"] is False
    assert entry["retries"] is None


@pytest.mark.parametrize("text", KEPT.values(), ids=KEPT.keys())
def test_identifiers_and_operational_values_are_not_mangled(lines: Lines, text: str) -> None:
    assert redact(text) == text
    log.info(text, extra={"detail": text})
    [entry] = lines()
    assert entry["msg"] == text
    assert entry["detail"] == text


def test_phi_next_to_an_identifier_is_still_scrubbed() -> None:
    text = "request 123e4567-e89b-12d3-a456-426614174000 for 555-123-4567"
    assert redact(text) == "request 123e4567-e89b-12d3-a456-426614174000 for [phone]"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("password=hunter2", "hunter2"),
        ("client_secret=s3cr3t-value", "s3cr3t-value"),
        ("access_token=0123456789abcdef0123456789abcdef", "0123456789abcdef"),
        ("refresh_token: 'rt-abc'", "rt-abc"),
        ("Authorization: Bearer eyJhbGciOiJFUzI1NiJ9.e30.sig", "eyJhbGci"),
        ("{'password': 'hunter2', 'user': 'a1'}", "hunter2"),
        ('{"patient_dob": "31 Jan"}', "31 Jan"),
        ("phone_number=unknown-format-0044", "0044"),
    ],
    ids=[
        "password",
        "snake_case secret",
        "hex token",
        "quoted token",
        "bearer authorization",
        "dict repr",
        "json field",
        "phone field of any format",
    ],
)
def test_named_secret_and_phi_fields_are_scrubbed(text: str, secret: str) -> None:
    scrubbed = redact(text)
    assert secret not in scrubbed
    assert "[redacted]" in scrubbed


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (
            'duplicate key value violates unique constraint "t_a_key"\n'
            "DETAIL:  Key (login)=(crafted-login) already exists.",
            "crafted-login",
        ),
        (
            'null value in column "b" violates not-null constraint\n'
            "DETAIL:  Failing row contains (1, crafted-row, null).",
            "crafted-row",
        ),
        ('invalid input syntax for type integer: "crafted-int"', "crafted-int"),
        ('invalid input value for enum status: "crafted-enum"', "crafted-enum"),
        ("CONTEXT:  unnamed portal parameter $1 = 'crafted-param'", "crafted-param"),
    ],
    ids=["unique key", "failing row", "type", "enum", "parameter context"],
)
def test_values_quoted_in_postgresql_errors_are_scrubbed(text: str, value: str) -> None:
    # SQLAlchemy's engines hide bound parameters; the server's own message quotes values.
    scrubbed = redact(text)
    assert value not in scrubbed
    assert "[redacted]" in scrubbed


def test_malformed_logging_call_is_written_without_its_arguments(lines: Lines) -> None:
    # Would otherwise raise from the filter into the caller, or print args to stderr.
    log.info("patient %s and %s", "555-123-4567")  # noqa: PLE1206
    [entry] = lines()
    assert entry["msg"].startswith("patient %s and %s")
    assert "555-123-4567" not in json.dumps(entry)


def test_record_carries_the_current_request_id(lines: Lines) -> None:
    token = request_id_var.set("3f2a9c0d8e7b6a5f4e3d2c1b0a998877")
    try:
        log.info("inside a request")
    finally:
        request_id_var.reset(token)
    log.info("outside a request")
    inside, outside = lines()
    assert inside["request_id"] == "3f2a9c0d8e7b6a5f4e3d2c1b0a998877"
    assert "request_id" not in outside


def test_each_record_is_one_json_line(lines: Lines) -> None:
    log.error("first line\nsecond line", extra={"count": 3})
    [entry] = lines()
    assert entry["msg"] == "first line\nsecond line"
    assert entry["level"] == "error"
    assert entry["logger"] == "test.logs"
    assert entry["count"] == 3
    assert entry["ts"].endswith("+00:00")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    names = ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic", "httpx")
    saved = (root.handlers[:], root.level)
    saved_loggers = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
        for name in names
    }
    saved_levels = {name: logging.getLogger(name).level for name in names}
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for name, (handlers, propagate) in saved_loggers.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.setLevel(saved_levels[name])


@pytest.mark.usefixtures("restore_logging")
def test_configured_logging_scrubs_records_from_third_party_loggers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "json")
    logging.getLogger("uvicorn.error").error("client 555-123-4567 sent garbage")
    logging.getLogger("sqlalchemy.pool").warning("reset for jane@example.org")
    logging.getLogger("uvicorn.access").info('GET /?ssn=123-45-6789 HTTP/1.1" 200')
    err = capsys.readouterr().err
    entries = [json.loads(line) for line in err.splitlines()]
    assert [e["logger"] for e in entries] == ["uvicorn.error", "sqlalchemy.pool"]
    assert entries[0]["msg"] == "client [phone] sent garbage"
    assert entries[1]["msg"] == "reset for [email]"
    assert "123-45-6789" not in err


@pytest.mark.usefixtures("restore_logging")
def test_console_format_is_scrubbed_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "console")
    try:
        raise RuntimeError("bad dob 1980-01-31")
    except RuntimeError:
        logging.getLogger("carebridge.test").exception("failed for %s", "+15551234567")
    err = capsys.readouterr().err
    assert "failed for [phone]" in err
    assert "RuntimeError: bad dob [date]" in err
    assert "+15551234567" not in err
    assert "1980-01-31" not in err
    assert not err.startswith("{")


@pytest.mark.usefixtures("restore_logging")
def test_a_webhook_urls_secret_query_leaking_into_the_log_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """httpx's INFO line for each request carries the whole URL."""
    configure_logging("INFO", "json")
    with httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(204))) as client:
        client.post("https://hooks.example/in?key=s3cret-from-the-app")
    assert "s3cret-from-the-app" not in capsys.readouterr().err
