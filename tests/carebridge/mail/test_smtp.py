"""The SMTP backend, against a real SMTP server (aiosmtpd, tests/smtp_server.py): e-mails
queued through identity's sender and delivered by the outbox worker arrive whole; TLS is
verified; a relay that is down, slow, busy or refusing leaves the e-mail in the outbox,
retried or dead-lettered where operators see it, never lost."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address

import pytest
from sqlalchemy import select

from carebridge import mail, outbox, wiring
from carebridge.cli import main
from carebridge.db import transaction
from carebridge.outbox import delivery as outbox_delivery
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity import emails
from tests.smtp_server import SmtpServer

TO = "pat@example.org"
FROM = "Riverside Clinic <no-reply@riverside.example>"
TEXT = "Confirm your address: https://carebridge.test/l/abc\nCode: 123456"
HTML = '<p>Confirm your address: <a href="https://carebridge.test/l/abc">confirm</a></p>'

Start = Callable[..., SmtpServer]


def runtime_for(settings: Settings, server: SmtpServer, **overrides: object) -> Runtime:
    values = {"email_from": FROM, "smtp_timeout_seconds": 2.0, **server.settings(), **overrides}
    return Runtime.build(
        Settings(data_dir=settings.data_dir, database_url=settings.database_url, **values)
    )


@pytest.fixture
def build(settings: Settings) -> Iterator[Callable[..., Runtime]]:
    built: list[Runtime] = []

    def make(server: SmtpServer, **overrides: object) -> Runtime:
        runtime = runtime_for(settings, server, **overrides)
        built.append(runtime)
        return runtime

    yield make
    for runtime in built:
        runtime.close()


def queue(runtime: Runtime, to: str = TO) -> str:
    """An e-mail as identity sends one: through Outward.email, in a transaction."""
    sender = wiring.identity_outward(runtime).email
    with transaction(runtime.sessions) as db:
        return sender.send_email(db, to=to, subject="Confirm your address", text=TEXT, html=HTML)


def work(runtime: Runtime, at: datetime | None = None) -> int:
    """One pass of the outbox worker as `carebridge worker` runs it (wiring's channels)."""
    channels = wiring.outbox_channels(runtime)
    # ``at`` for the first claim only: a row that fails again is due after a backoff from
    # the real time, which a clock stopped at ``at`` could find due at once.
    times = [at] if at is not None else []

    def clock() -> datetime:
        return times.pop() if times else datetime.now(UTC)

    return outbox.drain(runtime, channels, clock=clock)


def row(runtime: Runtime, message_id: str) -> outbox.OutboxMessage:
    with runtime.sessions() as db:
        found = db.scalar(select(outbox.OutboxMessage).where(outbox.OutboxMessage.id == message_id))
        assert found is not None
        return found


def test_an_email_queued_for_identity_arrives_with_its_sender_subject_and_both_parts(
    smtp_server: SmtpServer, build: Callable[..., Runtime]
) -> None:
    runtime = build(smtp_server)
    message_id = queue(runtime)
    assert smtp_server.messages == []  # queued, not sent, until the worker runs
    assert work(runtime) == 1
    (received,) = smtp_server.messages
    assert received.mail_from == "no-reply@riverside.example"
    assert received.rcpt_tos == [TO]
    email = received.email
    (sender,) = email["From"].addresses
    assert sender == Address("Riverside Clinic", "no-reply", "riverside.example")
    assert str(email["To"]) == TO
    assert str(email["Subject"]) == "Confirm your address"
    assert email["Date"].datetime is not None
    assert str(email["Message-ID"]) == f"<{message_id}@riverside.example>"
    assert email.get_content_type() == "multipart/alternative"
    assert received.part("plain").strip() == TEXT
    assert received.part("html").strip() == HTML
    assert row(runtime, message_id).state == outbox.DONE
    assert work(runtime) == 0  # nothing goes twice
    assert len(smtp_server.messages) == 1


@pytest.mark.parametrize("tls", ["starttls", "smtps"])
def test_tls_relays_are_verified_against_the_configured_ca(
    smtp_servers: Start, build: Callable[..., Runtime], tls: str
) -> None:
    server = smtp_servers(tls=tls)
    runtime = build(server)
    message_id = queue(runtime)
    assert work(runtime) == 1
    (received,) = server.messages
    assert received.rcpt_tos == [TO]
    assert row(runtime, message_id).state == outbox.DONE


@pytest.mark.parametrize("tls", ["starttls", "smtps"])
def test_an_untrusted_certificate_is_retried_never_sent_to(
    smtp_servers: Start, build: Callable[..., Runtime], tls: str
) -> None:
    # Signed by a CA the client was not given: a man in the middle, or a relay whose
    # certificate changed. Nothing goes out; the e-mail waits for an operator to fix it.
    server = smtp_servers(tls=tls, untrusted=True)
    runtime = build(server)
    message_id = queue(runtime)
    work(runtime)
    assert server.messages == []
    found = row(runtime, message_id)
    assert (found.state, found.last_error, found.attempts) == (
        outbox.PENDING,
        "smtp_tls_untrusted",
        1,
    )


def test_a_remote_relay_that_does_not_offer_starttls_gets_nothing_in_plain_text(
    smtp_servers: Start, build: Callable[..., Runtime]
) -> None:
    # smtp:// to a host that is not loopback requires STARTTLS: a relay (or someone
    # stripping STARTTLS from its answer) that offers none is not sent to in clear.
    server = smtp_servers(host="127.0.0.2")
    runtime = build(server)
    message_id = queue(runtime)
    work(runtime)
    assert server.handler.connections == 1 and server.messages == []
    found = row(runtime, message_id)
    assert (found.state, found.last_error) == (outbox.PENDING, "smtp_starttls_missing")


def test_the_relay_credentials_are_url_decoded_and_a_wrong_password_is_retried(
    smtp_servers: Start, build: Callable[..., Runtime]
) -> None:
    server = smtp_servers(tls="starttls", credentials=("relay@clinic", "p:ss/w@rd"))
    wrong = build(server, smtp_url=f"smtp://relay%40clinic:nope@127.0.0.1:{server.port}")
    first = queue(wrong)
    work(wrong)
    assert row(wrong, first).last_error == "smtp_auth"
    assert server.messages == []
    right = build(server, smtp_url=f"smtp://relay%40clinic:p%3Ass%2Fw%40rd@127.0.0.1:{server.port}")
    work(right, at=datetime.now(UTC) + timedelta(hours=2))
    assert len(server.messages) == 1
    assert server.handler.logins[-1] == ("relay@clinic", "p:ss/w@rd")
    assert row(right, first).state == outbox.DONE


def test_a_relay_that_is_down_is_retried_with_backoff_and_nothing_is_lost(
    smtp_servers: Start,
    build: Callable[..., Runtime],
    cli_env: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = smtp_servers(running=False)  # nothing listens on its port yet
    runtime = build(server)
    message_id = queue(runtime)
    work(runtime)
    found = row(runtime, message_id)
    assert (found.state, found.last_error, found.attempts) == (
        outbox.PENDING,
        "smtp_unreachable",
        1,
    )
    # Backing off, not hammering: the policy's first wait is 30 s, give or take half.
    assert found.due_at - found.updated_at >= timedelta(seconds=15)
    assert work(runtime) == 0  # not due again yet
    # Operators see it waiting.
    capsys.readouterr()
    assert main(["notifications", "status"]) == 0
    assert "  email    pending    1" in capsys.readouterr().out
    # A second failure waits longer: 60 s, give or take half.
    work(runtime, at=found.due_at)
    again = row(runtime, message_id)
    assert (again.state, again.attempts) == (outbox.PENDING, 2)
    assert again.due_at - again.updated_at >= timedelta(seconds=30)
    server.start()
    assert work(runtime, at=again.due_at) == 1
    assert len(server.messages) == 1
    assert row(runtime, message_id).state == outbox.DONE


def test_a_slow_relay_times_out_and_the_email_is_sent_on_a_later_try(
    smtp_servers: Start, build: Callable[..., Runtime]
) -> None:
    server = smtp_servers(delay=3.0)
    runtime = build(server, smtp_timeout_seconds=0.5)
    message_id = queue(runtime)
    work(runtime)
    found = row(runtime, message_id)
    assert (found.state, found.last_error) == (outbox.PENDING, "smtp_timeout")
    assert server.messages == []
    server.handler.delay = 0
    assert work(runtime, at=found.due_at) == 1
    assert len(server.messages) == 1
    assert row(runtime, message_id).state == outbox.DONE


@pytest.mark.parametrize(
    ("replies", "reason"),
    [
        ({"rcpt_reply": "421 4.3.2 Service shutting down"}, "smtp_recipient_421"),
        ({"rcpt_reply": "450 4.2.0 Mailbox busy"}, "smtp_recipient_450"),
        ({"data_reply": "451 4.3.0 Try again later"}, "smtp_data_451"),
    ],
)
def test_a_transient_refusal_is_retried(
    smtp_servers: Start, build: Callable[..., Runtime], replies: dict[str, str], reason: str
) -> None:
    server = smtp_servers(**replies)
    runtime = build(server)
    message_id = queue(runtime)
    work(runtime)
    found = row(runtime, message_id)
    assert (found.state, found.last_error) == (outbox.PENDING, reason)
    server.handler.rcpt_reply = server.handler.data_reply = None
    assert work(runtime, at=found.due_at) == 1
    assert len(server.messages) == 1


def test_a_refused_recipient_is_a_dead_letter_operators_see_without_the_address(
    smtp_servers: Start,
    build: Callable[..., Runtime],
    cli_env: object,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = smtp_servers(rcpt_reply="550 5.1.1 <pat@example.org>: no such user")
    runtime = build(server)
    message_id = queue(runtime)
    with caplog.at_level(logging.INFO):
        work(runtime)
    found = row(runtime, message_id)
    assert (found.state, found.last_error) == (outbox.DEAD, "smtp_recipient_550")
    assert work(runtime, at=datetime.now(UTC) + timedelta(days=1)) == 0  # not retried
    assert server.messages == []
    capsys.readouterr()
    assert main(["notifications", "dead"]) == 0
    out = capsys.readouterr().out
    assert message_id in out and "smtp_recipient_550" in out
    # carebridge's logs and the operators' view name the row and the status code, never
    # the address or what the e-mail said (the test server's own log is not ours).
    ours = [r for r in caplog.records if r.name.startswith("carebridge")]
    logged = out + "\n".join(f"{r.getMessage()} {vars(r)}" for r in ours)
    for secret in (TO, "pat@", "Confirm your address", "123456", "l/abc"):
        assert secret not in logged
    assert any(getattr(r, "smtp_status", None) == 550 for r in ours)


def test_a_worker_that_dies_after_sending_sends_again_with_the_same_message_id(
    smtp_server: SmtpServer, build: Callable[..., Runtime]
) -> None:
    # The outbox is at least once: a worker killed between handing the e-mail to the
    # relay and recording it leaves the row "sending"; once its lease runs out the next
    # claim sends it again. The copy carries the same Message-ID, so receiving systems
    # (and the patient's mail client) can tell it is the same e-mail.
    runtime = build(smtp_server)
    queue(runtime)
    channels = wiring.outbox_channels(runtime)
    now = datetime.now(UTC)
    (first,) = outbox_delivery.claim(runtime, channels, now, 10)
    assert outbox_delivery.deliver(channels.handlers[mail.CHANNEL], first) is None
    # ...and the worker died here, before record().
    (second,) = outbox_delivery.claim(runtime, channels, now + channels.lease, 10)
    assert outbox_delivery.deliver(channels.handlers[mail.CHANNEL], second) is None
    outbox_delivery.record(runtime, channels, [(second, None)])
    one, two = smtp_server.messages
    assert one.email["Message-ID"] == two.email["Message-ID"]
    assert row(runtime, first.id).state == outbox.DONE


def test_identitys_own_email_arrives_signed_with_the_configured_sender_name(
    smtp_server: SmtpServer, build: Callable[..., Runtime]
) -> None:
    # The name patients see is the configured one (an organization's name can reveal a
    # condition, so it is the operator's choice), in the From header and the text.
    runtime = build(smtp_server)
    outward = wiring.identity_outward(runtime)
    link = "https://id.example.org/password/forgot"
    with transaction(runtime.sessions) as db:
        emails.send(
            db,
            outward.email,
            runtime.settings,
            to=TO,
            email=emails.Email("password_changed", link=link),
        )
    work(runtime)
    (received,) = smtp_server.sent_to("PAT@example.org")
    assert received.email["From"].addresses[0].display_name == "Riverside Clinic"
    assert str(received.email["Subject"]) == "Your password was changed"
    assert link in received.part("plain") and "Riverside Clinic" in received.part("plain")
    assert f'href="{link}"' in received.part("html")
