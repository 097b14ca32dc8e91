"""identity's e-mail sender refuses what would add a header to the e-mail: a line break
in the recipient or the subject, or a recipient that is more than (or not) one address.
Nothing is queued for a refused e-mail."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from carebridge import mail, outbox, wiring
from carebridge.db import transaction
from carebridge.runtime import Runtime


def queued(runtime: Runtime) -> int:
    with runtime.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(outbox.OutboxMessage)) or 0)


def send(runtime: Runtime, *, to: str = "pat@example.org", subject: str = "Sign in") -> str:
    sender = wiring.identity_outward(runtime).email
    with transaction(runtime.sessions) as db:
        return sender.send_email(db, to=to, subject=subject, text="https://carebridge.test/l/x")


@pytest.mark.parametrize(
    "to",
    [
        "pat@example.org\r\nBcc: everyone@attacker.example",
        "pat@example.org\nBcc: everyone@attacker.example",
        "pat@example.org\rBcc: everyone@attacker.example",
        "pat@example.org, everyone@attacker.example",
        "pat@example.org everyone@attacker.example",
        "Pat <pat@example.org>, <everyone@attacker.example>",
        "undisclosed: pat@example.org, everyone@attacker.example;",
        "pat@example.org\x00",
        "Pat\x0b <pat@example.org>",
        "pat@example.org\u2028Bcc: everyone@attacker.example",
        " pat@example.org",
        "pat",
        "pat@",
        "",
    ],
)
def test_header_injection_in_the_recipient_is_refused(runtime: Runtime, to: str) -> None:
    with pytest.raises(mail.UnsafeEmailHeaderError):
        send(runtime, to=to)
    assert queued(runtime) == 0


@pytest.mark.parametrize(
    "subject",
    [
        "Sign in\r\nBcc: everyone@attacker.example",
        "Sign in\nBcc: everyone@attacker.example",
        "Sign in\rX-Injected: 1",
        "Sign in\u2028Bcc: everyone@attacker.example",
        "Sign in\x00",
        "Sign in\t",
        "",
        "   ",
        "x" * 201,
    ],
)
def test_header_injection_in_the_subject_is_refused(runtime: Runtime, subject: str) -> None:
    with pytest.raises(mail.UnsafeEmailHeaderError):
        send(runtime, subject=subject)
    assert queued(runtime) == 0


@pytest.mark.parametrize(
    "to", ["pat@example.org", "Pat Doe <pat@example.org>", "PAT@Example.ORG", "josé@example.org"]
)
def test_one_address_is_queued(runtime: Runtime, to: str) -> None:
    send(runtime, to=to)
    assert queued(runtime) == 1


def test_the_refusal_is_a_value_error_for_callers_that_validate_input() -> None:
    assert issubclass(mail.UnsafeEmailHeaderError, ValueError)
