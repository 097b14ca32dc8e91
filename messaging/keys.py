"""Thread data keys against the keyring: re-wrapping after a rotation, and the start-up
check that every wrapped key still has the KEK it needs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import func, select

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.runtime import Runtime
from messaging import crypto
from messaging.crypto import KeyUnavailableError
from messaging.models import Thread

log = logging.getLogger("carebridge.messaging")
BATCH = 500


@dataclass(frozen=True)
class Rewrapped:
    rewrapped: int
    kek_id: str


def rewrap_all(runtime: Runtime, *, actor: str = "operator") -> Rewrapped:
    """Wrap every live thread's data key under the keyring's active KEK.

    Batches commit one by one; a thread already under the active KEK is skipped, so an
    interrupted run is finished by running it again. Message rows are not touched.
    """
    keyring = runtime.keyring
    active = keyring.active_kek.kid
    total = 0
    while True:
        with transaction(runtime.sessions) as db:
            query = (
                select(Thread)
                .where(Thread.data_key_wrapped.is_not(None), Thread.kek_id != active)
                .order_by(Thread.id)
                .limit(BATCH)
                .with_for_update()
            )
            batch = list(db.scalars(query))
            for thread in batch:
                crypto.rewrap(keyring, thread)
            if batch:
                audit.append(
                    db,
                    actor=actor,
                    action="messaging.keys.rewrap",
                    outcome=Outcome.ALLOWED,
                    target=f"kek:{active}",
                )
        total += len(batch)
        if len(batch) < BATCH:
            return Rewrapped(total, active)


def kek_usage(runtime: Runtime) -> dict[str, int]:
    """How many live thread data keys each KEK wraps."""
    with runtime.sessions() as db:
        query = (
            select(Thread.kek_id, func.count())
            .where(Thread.data_key_wrapped.is_not(None))
            .group_by(Thread.kek_id)
        )
        return {str(kid): int(count) for kid, count in db.execute(query)}


def problems(runtime: Runtime) -> list[str]:
    """Why stored thread keys would not open with this keyring: a KEK missing from it, or
    one with the same ID but other key material (one thread per KEK is tried)."""
    keyring = runtime.keyring
    held = {kek.kid for kek in keyring.keks}
    found = []
    with runtime.sessions() as db:
        for kek_id in kek_usage(runtime):
            if kek_id not in held:
                found.append(
                    f"key-encryption key {kek_id} wraps thread keys but is not in the keyring"
                )
                continue
            sample = db.scalars(
                select(Thread)
                .where(Thread.kek_id == kek_id, Thread.data_key_wrapped.is_not(None))
                .limit(1)
            ).first()
            if sample is None:
                continue
            try:
                crypto.cipher_for(keyring, sample)
            except KeyUnavailableError:
                found.append(
                    f"key-encryption key {kek_id} in the keyring does not open "
                    "the thread keys it wrapped"
                )
    return found


def check_at_start(runtime: Runtime) -> None:
    """Log (as errors, for alerting) every stored key this keyring cannot open."""
    for problem in problems(runtime):
        log.error("messaging keys: %s", problem)
