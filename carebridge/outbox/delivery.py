"""The outbox worker: claim what is due, hand each row to its channel's handler, record.

1. **Claim** (one transaction for a small batch): due rows of the channels this worker
   has handlers for, locked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so parallel
   workers never take the same row (SQLite runs one worker). Each becomes ``sending``,
   its attempt counted, ``due_at`` moved to the end of the handler's lease.
2. **Deliver** (no transaction open): the handler does its one thing, row after row;
   rows still waiting when half the lease is gone are handed back (:func:`release`),
   due again at once, so none is sent after its lease ran out.
3. **Record** (one transaction): done; or, by what the handler raised, a retry after
   :class:`~carebridge.outbox.policy.RetryPolicy`'s backoff, or a dead letter.

A worker killed between 1 and 3 leaves the row ``sending``; when its lease runs out the
claim takes it again. Delivery of these rows is therefore at least once: a handler whose
sends must never repeat, or that learns outcomes later from its provider (sms's
notifications), keeps its own ledger and is drained by the same worker as a
:class:`Ledger`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from carebridge.db import transaction
from carebridge.outbox import queue
from carebridge.outbox.models import DEAD, DONE, PENDING, SENDING, OutboxMessage
from carebridge.outbox.policy import RetryPolicy
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from carebridge.worker import Job

log = logging.getLogger("carebridge.outbox")

LEASE = timedelta(seconds=60)
KEEP_DONE = timedelta(days=7)


@dataclass(frozen=True)
class Message:
    """One claimed row, as its handler sees it (``content`` opened, in memory only)."""

    id: str
    channel: str
    kind: str
    payload: Mapping[str, str]
    content: Mapping[str, str]
    attempt: int


class RetryLater(Exception):  # noqa: N818  (an outcome, not a failure of ours)
    """Not delivered this time; try again after the policy's backoff."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Undeliverable(Exception):  # noqa: N818
    """Never deliverable (a refused address, a bad request): a dead letter at once."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Handler(Protocol):
    """Delivers the outbox rows of one channel. Returns, or raises RetryLater or
    Undeliverable; anything else counts as RetryLater("error")."""

    @property
    def channel(self) -> str: ...

    def deliver(self, message: Message) -> None: ...


class Ledger(Protocol):
    """A channel that keeps its own rows because it records more than the outbox does
    (sms's notifications: the dispatcher's decision, each provider attempt and its
    status callbacks, exactly-once sending). The outbox worker drains it in the same
    pass, with the same retry policy; the operators' commands show it with the rest."""

    @property
    def name(self) -> str: ...

    def drain(self) -> int:
        """Deliver what is due for a few seconds at most; returns how many were taken."""


@dataclass(frozen=True)
class Channels:
    """What the composition root registers: handlers by channel, and ledgers."""

    handlers: Mapping[str, Handler] = field(default_factory=dict)
    ledgers: Sequence[Ledger] = ()
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    lease: timedelta = LEASE


def _is_postgres(db: Session) -> bool:
    return db.get_bind().dialect.name == "postgresql"


def claim(runtime: Runtime, channels: Channels, now: datetime, limit: int) -> list[Message]:
    """Take a batch of due rows of the registered channels (one transaction)."""
    names = sorted(channels.handlers)
    if not names:
        return []
    with transaction(runtime.sessions) as db:
        query = (
            select(OutboxMessage)
            .where(
                OutboxMessage.state.in_((PENDING, SENDING)),
                OutboxMessage.due_at <= now,
                OutboxMessage.channel.in_(names),
            )
            .order_by(OutboxMessage.due_at)
            .limit(limit)
        )
        if _is_postgres(db):
            query = query.with_for_update(skip_locked=True)
        claimed: list[Message] = []
        for row in db.scalars(query):
            row.updated_at = now
            if row.state == SENDING:
                log.warning("outbox lease ran out, delivering again", extra={"outbox": row.id})
            if channels.policy.exhausted(row.attempts):
                row.state, row.last_error = DEAD, "max_attempts"
                log.warning("outbox dead letter", extra={"outbox": row.id, "reason": "max"})
                continue
            row.state, row.due_at = SENDING, now + channels.lease
            row.attempts += 1
            content: dict[str, str] = {}
            if row.sealed is not None:
                content = queue.open_sealed(
                    runtime.keyring, row.id, row.channel, row.kind, row.sealed
                )
            claimed.append(
                Message(
                    id=row.id,
                    channel=row.channel,
                    kind=row.kind,
                    payload={str(k): str(v) for k, v in row.payload.items()},
                    content=content,
                    attempt=row.attempts,
                )
            )
    return claimed


# A claimed message and how its delivery went: None (delivered) or what was raised.
Outcome = tuple[Message, RetryLater | Undeliverable | None]


def deliver(handler: Handler, message: Message) -> RetryLater | Undeliverable | None:
    try:
        handler.deliver(message)
    except (RetryLater, Undeliverable) as exc:
        return exc
    except Exception as exc:  # noqa: BLE001  (a handler's bug must not take the batch down)
        # The type only: a handler's message could quote what it was sending.
        log.error(
            "outbox handler failed",
            extra={"outbox": message.id, "error": type(exc).__name__},
        )
        return RetryLater("error")
    return None


def record(runtime: Runtime, channels: Channels, outcomes: Sequence[Outcome]) -> None:
    """Each delivery's outcome (one transaction). A row another worker took over after
    this one's lease ran out (its attempt count moved on) is left to that worker."""
    if not outcomes:
        return
    now = utcnow()
    with transaction(runtime.sessions) as db:
        for message, result in outcomes:
            row = db.get(OutboxMessage, message.id)
            if row is None or row.state != SENDING or row.attempts != message.attempt:
                continue
            row.updated_at = now
            if result is None:
                row.state, row.sealed, row.last_error = DONE, None, None
                continue
            row.last_error = result.reason[:64]
            if isinstance(result, Undeliverable) or channels.policy.exhausted(row.attempts):
                row.state = DEAD
                log.warning(
                    "outbox dead letter",
                    extra={"outbox": row.id, "channel": row.channel, "reason": row.last_error},
                )
            else:
                row.state, row.due_at = PENDING, now + channels.policy.backoff(row.attempts)


def drain(
    runtime: Runtime,
    channels: Channels,
    *,
    clock: Callable[[], datetime] = utcnow,
    max_seconds: float = 5.0,
    limit: int = 20,
) -> int:
    """Every ledger's due work, then the outbox rows', for up to ``max_seconds`` each;
    returns how many were taken. A ledger that fails (its provider misconfigured, the
    database gone) keeps no other channel waiting: its error is raised after the rest."""
    total = 0
    failed: Exception | None = None
    for ledger in channels.ledgers:
        try:
            total += ledger.drain()
        except Exception as exc:  # noqa: BLE001  (raised below, once the others ran)
            failed = failed or exc
    total += _drain_rows(runtime, channels, clock=clock, max_seconds=max_seconds, limit=limit)
    if failed is not None:
        raise failed
    return total


def _drain_rows(
    runtime: Runtime,
    channels: Channels,
    *,
    clock: Callable[[], datetime],
    max_seconds: float,
    limit: int,
) -> int:
    total = 0
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        batch = claim(runtime, channels, clock(), limit)
        if not batch:
            break
        # A batch is delivered one row after another under leases taken together: rows
        # still waiting when half the lease is gone (a slow provider) are handed back
        # rather than sent after their lease ran out, when another worker may send them too.
        hand_back_at = time.monotonic() + channels.lease.total_seconds() / 2
        outcomes: list[Outcome] = []
        started = 0  # rows handed to their handler (one may be in flight when interrupted)
        try:
            for message in batch:
                if time.monotonic() >= hand_back_at:
                    break
                started += 1
                outcomes.append((message, deliver(channels.handlers[message.channel], message)))
        finally:
            record(runtime, channels, outcomes)
            release(runtime, batch[started:])
        total += len(outcomes)
    return total


def release(runtime: Runtime, messages: Sequence[Message]) -> None:
    """Claimed rows not attempted: due again now, their attempt not counted (one
    transaction). A row another worker has taken since is left to it."""
    if not messages:
        return
    now = utcnow()
    with transaction(runtime.sessions) as db:
        for message in messages:
            row = db.get(OutboxMessage, message.id)
            if row is None or row.state != SENDING or row.attempts != message.attempt:
                continue
            row.state, row.due_at, row.updated_at = PENDING, now, now
            row.attempts -= 1


def purge(runtime: Runtime, now: datetime | None = None) -> int:
    """Delivered rows leave after a week (dead letters stay until an operator acts)."""
    cutoff = (now or utcnow()) - KEEP_DONE
    with transaction(runtime.sessions) as db:
        result: Any = db.execute(
            delete(OutboxMessage).where(
                OutboxMessage.state == DONE, OutboxMessage.updated_at < cutoff
            )
        )
        return int(result.rowcount or 0)


def job(build: Callable[[Runtime], Channels], *, name: str = "outbox") -> Job:
    """The one outbox job: every registered channel, every second (the composition root
    builds the channels once per runtime: one provider client, one connection pool)."""
    built: dict[int, tuple[Runtime, Channels]] = {}

    def run(runtime: Runtime) -> None:
        entry = built.get(id(runtime))
        if entry is None or entry[0] is not runtime:  # an ID reused by a later runtime
            entry = built[id(runtime)] = (runtime, build(runtime))
        drain(runtime, entry[1])

    return Job(name, 1.0, run)


def _purge(runtime: Runtime) -> None:
    purge(runtime)


PURGE = Job("outbox-purge", 3600.0, _purge)
