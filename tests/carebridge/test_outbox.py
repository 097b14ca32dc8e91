"""The outbox: rows commit with their transaction, the worker delivers each once it is
due, failures back off under the one policy and end as dead letters an operator sees."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from sqlalchemy import select

from carebridge import mail, outbox, wiring
from carebridge.app import create_app
from carebridge.cli import main
from carebridge.db import transaction
from carebridge.outbox import delivery as outbox_delivery
from carebridge.outbox import operations
from carebridge.runtime import Runtime
from identity.interfaces import Outward


def email_channels(out: StringIO) -> outbox.Channels:
    return outbox.Channels(handlers={mail.CHANNEL: mail.ConsoleMailer(out=out)})


def send_email(runtime: Runtime, to: str = "pat@example.org") -> str:
    sender = wiring.identity_outward(runtime).email
    with transaction(runtime.sessions) as db:
        return sender.send_email(
            db, to=to, subject="Sign in", text="https://carebridge.test/l/abc", html=None
        )


def rows(runtime: Runtime) -> list[outbox.OutboxMessage]:
    with runtime.sessions() as db:
        return list(db.scalars(select(outbox.OutboxMessage)))


class Failing:
    """A channel whose provider keeps refusing for a while."""

    channel = mail.CHANNEL

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def deliver(self, message: outbox.Message) -> None:
        self.calls += 1
        raise self.error


def test_an_email_is_sent_by_the_worker_once_its_transaction_commits(runtime: Runtime) -> None:
    out = StringIO()
    message_id = send_email(runtime)
    # Sealed in the row: neither the address nor the link is stored in clear.
    (row,) = rows(runtime)
    assert row.id == message_id and row.state == outbox.PENDING
    assert row.sealed is not None and b"pat@example.org" not in row.sealed
    assert outbox.drain(runtime, email_channels(out)) == 1
    assert out.getvalue() == "[email to pat@example.org] Sign in\nhttps://carebridge.test/l/abc\n"
    (row,) = rows(runtime)
    assert (row.state, row.sealed, row.attempts) == (outbox.DONE, None, 1)
    assert outbox.drain(runtime, email_channels(out)) == 0  # nothing goes twice


def test_a_rolled_back_transaction_enqueues_nothing(runtime: Runtime) -> None:
    sender = wiring.identity_outward(runtime).email

    def event_that_fails() -> None:
        with transaction(runtime.sessions) as db:
            sender.send_email(db, to="pat@example.org", subject="Sign in", text="x")
            raise RuntimeError("the event did not happen")

    with pytest.raises(RuntimeError):
        event_that_fails()
    out = StringIO()
    assert outbox.drain(runtime, email_channels(out)) == 0
    assert rows(runtime) == [] and out.getvalue() == ""


def test_failures_back_off_then_end_as_a_dead_letter_an_operator_can_put_back(
    runtime: Runtime,
) -> None:
    message_id = send_email(runtime)
    failing = Failing(outbox.RetryLater("unavailable"))
    policy = outbox.RetryPolicy(max_attempts=2)
    channels = outbox.Channels(handlers={mail.CHANNEL: failing}, policy=policy)
    now = datetime.now(UTC)
    outbox.drain(runtime, channels, clock=lambda: now)
    (row,) = rows(runtime)
    assert (row.state, row.attempts, row.last_error) == (outbox.PENDING, 1, "unavailable")
    # Not due again before its backoff (at least half the base) has passed.
    assert outbox.drain(runtime, channels, clock=lambda: now) == 0
    later = now + policy.cap * 2
    outbox.drain(runtime, channels, clock=lambda: later)
    (row,) = rows(runtime)
    assert (row.state, row.attempts, failing.calls) == (outbox.DEAD, 2, 2)
    assert [dead.id for dead in operations.dead_letters(runtime)] == [message_id]
    # An operator puts it back: due now, with a fresh count; delivered this time.
    assert operations.retry(runtime, message_id, actor="operator:test", now=later) == "dead"
    assert operations.retry(runtime, message_id, actor="operator:test", now=later) is None
    out = StringIO()
    assert outbox.drain(runtime, email_channels(out), clock=lambda: later) == 1
    assert "[email to pat@example.org]" in out.getvalue()


def test_an_undeliverable_row_is_a_dead_letter_at_once(runtime: Runtime) -> None:
    send_email(runtime)
    failing = Failing(outbox.Undeliverable("rejected"))
    outbox.drain(runtime, outbox.Channels(handlers={mail.CHANNEL: failing}))
    (row,) = rows(runtime)
    assert (row.state, row.last_error, failing.calls) == (outbox.DEAD, "rejected", 1)


def test_a_handler_that_crashes_is_retried_and_its_error_not_quoted(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    send_email(runtime)
    failing = Failing(ValueError("pat@example.org"))
    outbox.drain(runtime, outbox.Channels(handlers={mail.CHANNEL: failing}))
    (row,) = rows(runtime)
    assert (row.state, row.last_error) == (outbox.PENDING, "error")
    assert "pat@example.org" not in caplog.text


def test_a_claim_whose_worker_died_is_delivered_again_after_its_lease(
    runtime: Runtime,
) -> None:
    send_email(runtime)
    channels = email_channels(StringIO())
    now = datetime.now(UTC)
    (first,) = outbox_delivery.claim(runtime, channels, now, 10)  # then the worker died
    assert outbox_delivery.claim(runtime, channels, now, 10) == []  # leased, not due
    (second,) = outbox_delivery.claim(runtime, channels, now + channels.lease, 10)
    assert (first.id, first.attempt, second.attempt) == (second.id, 1, 2)
    # The dead worker's late word changes nothing: the row is the second claim's.
    outbox_delivery.record(runtime, channels, [(first, outbox.Undeliverable("late"))])
    outbox_delivery.record(runtime, channels, [(second, None)])
    (row,) = rows(runtime)
    assert (row.state, row.last_error) == (outbox.DONE, None)


def test_parallel_workers_deliver_each_row_exactly_once(runtime: Runtime) -> None:
    ids = {send_email(runtime, to=f"p{n}@example.org") for n in range(30)}
    delivered: list[str] = []
    lock = threading.Lock()

    class Recording:
        channel = mail.CHANNEL

        def deliver(self, message: outbox.Message) -> None:
            with lock:
                delivered.append(message.id)

    channels = outbox.Channels(handlers={mail.CHANNEL: Recording()})
    threads = [
        threading.Thread(
            target=outbox_delivery.drain, args=(runtime, channels), kwargs={"limit": 3}
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(delivered) == sorted(ids)


def test_done_rows_are_purged_after_a_week_dead_letters_stay(runtime: Runtime) -> None:
    send_email(runtime)
    outbox.drain(runtime, email_channels(StringIO()))
    dead_id = send_email(runtime)
    outbox.drain(
        runtime, outbox.Channels(handlers={mail.CHANNEL: Failing(outbox.Undeliverable("x"))})
    )
    assert outbox_delivery.purge(runtime, datetime.now(UTC) + timedelta(days=8)) == 1
    assert [row.id for row in rows(runtime)] == [dead_id]


def test_the_cli_shows_every_channel_and_puts_a_dead_letter_back(
    runtime: Runtime, cli_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    message_id = send_email(runtime)
    outbox.drain(
        runtime, outbox.Channels(handlers={mail.CHANNEL: Failing(outbox.Undeliverable("rejected"))})
    )
    capsys.readouterr()
    assert main(["notifications", "status"]) == 0
    out = capsys.readouterr().out
    assert "  email    dead       1" in out
    assert "outbox dead letters: 1" in out
    assert main(["notifications", "dead"]) == 0
    out = capsys.readouterr().out
    assert message_id in out and "rejected" in out and "pat@example.org" not in out
    assert main(["notifications", "show", message_id]) == 0
    out = capsys.readouterr().out
    assert "state: dead" in out and "pat@example.org" not in out
    assert main(["notifications", "retry", message_id]) == 0
    assert f"{message_id}: dead -> pending" in capsys.readouterr().out
    assert main(["notifications", "retry", message_id]) == 1  # pending is no dead letter


def test_the_app_hands_identity_its_senders_through_the_outbox(runtime: Runtime) -> None:
    outward = create_app(runtime).state.outward
    assert isinstance(outward, Outward)
    with transaction(runtime.sessions) as db:
        code_id = outward.one_time_codes.send_code(db, to="+15555550123", code="123456")
        email_id = outward.email.send_email(db, to="pat@example.org", subject="s", text="t")
    assert {(row.id, row.channel) for row in rows(runtime)} == {
        (code_id, "sms"),
        (email_id, "email"),
    }


def test_a_failing_ledger_keeps_no_other_channel_waiting(runtime: Runtime) -> None:
    class Broken:
        name = "broken"

        def drain(self) -> int:
            raise RuntimeError("provider misconfigured")

    send_email(runtime)
    out = StringIO()
    channels = outbox.Channels(
        handlers={mail.CHANNEL: mail.ConsoleMailer(out=out)}, ledgers=(Broken(),)
    )
    with pytest.raises(RuntimeError, match="misconfigured"):
        outbox.drain(runtime, channels)
    assert "[email to pat@example.org]" in out.getvalue()
    assert [row.state for row in rows(runtime)] == [outbox.DONE]


def test_a_slow_batch_hands_back_rows_before_their_lease_runs_out(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    # Rows are claimed together and delivered one after another: behind a slow provider
    # the last ones would be sent after their lease ran out, when another worker may
    # have claimed and sent them too. They are handed back instead, uncounted.
    ids = [send_email(runtime, to=f"p{n}@example.org") for n in range(3)]
    delivered: list[str] = []
    lease_left: list[float] = []

    class Slow:
        channel = mail.CHANNEL

        def deliver(self, message: outbox.Message) -> None:
            with runtime.sessions() as db:
                row = db.get(outbox.OutboxMessage, message.id)
                assert row is not None
                lease_left.append((row.due_at - datetime.now(UTC)).total_seconds())
            delivered.append(message.id)
            time.sleep(0.6)

    channels = outbox.Channels(handlers={mail.CHANNEL: Slow()}, lease=timedelta(seconds=1))
    with caplog.at_level(logging.WARNING):
        assert outbox.drain(runtime, channels) == 3
    assert sorted(delivered) == sorted(ids)  # each once, the handed-back ones on a new claim
    assert min(lease_left) > 0.4  # every row sent with at least half its lease left
    assert {(row.state, row.attempts) for row in rows(runtime)} == {(outbox.DONE, 1)}
    assert "lease ran out" not in caplog.text
