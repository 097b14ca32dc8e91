"""The transactional outbox: one for every channel (SMS and voice, e-mail, next webhooks).

A feature puts a row in the outbox inside the transaction of the event that causes it
(:func:`enqueue`, or :func:`row` with its other rows); the one outbox job of
``carebridge worker`` hands each due row to the handler the composition root registered
for its channel (:class:`Channels`), with one retry policy (:class:`RetryPolicy`), and
``carebridge notifications`` shows every channel in one place (:mod:`.operations`).

This is the public API; the modules behind it are the outbox's own.
"""

from __future__ import annotations

from carebridge.outbox.delivery import (
    PURGE,
    Channels,
    Handler,
    Ledger,
    Message,
    RetryLater,
    Undeliverable,
    drain,
    job,
)
from carebridge.outbox.models import DEAD, DONE, PENDING, SENDING, OutboxMessage
from carebridge.outbox.policy import DEFAULT as DEFAULT_POLICY
from carebridge.outbox.policy import RetryPolicy
from carebridge.outbox.queue import enqueue, row

__all__ = [
    "DEAD",
    "DEFAULT_POLICY",
    "DONE",
    "PENDING",
    "PURGE",
    "SENDING",
    "Channels",
    "Handler",
    "Ledger",
    "Message",
    "OutboxMessage",
    "RetryLater",
    "RetryPolicy",
    "Undeliverable",
    "drain",
    "enqueue",
    "job",
    "row",
]
