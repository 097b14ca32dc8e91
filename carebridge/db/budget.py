"""How long a process lets the database take, by its role."""

from __future__ import annotations

import math
from dataclasses import dataclass

# A connection whose statement outlived the server's statement_timeout is shut down
# by the client this much later: the server, when it still runs, ends it first (the
# connection stays usable); the client's clock is for a server that stopped answering.
CLIENT_GRACE_SECONDS = 1.0
# Longest a transaction may sit idle, in every role: the gaps between a transaction's
# statements are Python's work (hashing, encryption, a batch of roster rows), never a
# person's. Past it the server ends the session and releases its locks.
IDLE_IN_TRANSACTION_SECONDS = 60.0


@dataclass(frozen=True)
class Budget:
    """How long a process lets the database take, by its role (docs/operations.md).

    ``seconds`` bounds each statement and each lock wait (PostgreSQL's
    ``statement_timeout`` and ``lock_timeout``; SQLite's ``busy_timeout``), and the wait
    for a pooled connection (up to 30 s). The client ends a wait on PostgreSQL
    :data:`CLIENT_GRACE_SECONDS` later (:mod:`carebridge.db.deadlines`), and connecting
    within ``connect_seconds``.
    """

    role: str = "web"
    seconds: float = 5.0

    @property
    def client_seconds(self) -> float:
        return self.seconds + CLIENT_GRACE_SECONDS

    @property
    def connect_seconds(self) -> int:
        # libpq counts whole seconds, at least 2; more than 10 only delays the answer.
        return max(2, min(10, math.ceil(self.seconds)))

    @property
    def pool_seconds(self) -> float:
        return min(self.seconds, 30.0)

    def server_settings(self) -> dict[str, str]:
        """PostgreSQL settings for this role's sessions, in milliseconds."""
        return {
            "statement_timeout": str(round(self.seconds * 1000)),
            "lock_timeout": str(round(self.seconds * 1000)),
            "idle_in_transaction_session_timeout": str(
                round(max(IDLE_IN_TRANSACTION_SECONDS, self.seconds) * 1000)
            ),
        }
