"""The database: engine, sessions, the models' base, what a failure means, and the speed
kit, the one place where code bypasses the ORM.

Domain modules write their statements with SQLAlchemy (the ORM, or Core:
``insert().returning()``, CTEs, ``union_all``, named columns) and run them in a
:func:`transaction`. The speed kit is for a hot path that a benchmark in ``bench/`` shows
is bound by SQLAlchemy's own overhead or by round trips, and only there:

- :class:`DirectStatement` (:mod:`carebridge.db.direct`): a Core statement, compiled
  once, run straight on the driver: no events, no type processing, so only for
  parameters and columns of plain types;
- :func:`insert_together` and :func:`insert_gated` (:mod:`carebridge.db.together`):
  several rows, or rows behind a claim, in one statement on PostgreSQL;
- :class:`LoopConnections` (:mod:`carebridge.db.loop_pool`): statements awaited on the
  event loop itself, no worker thread, in autocommit.

A domain module using the kit still states its SQL as Core constructs; only this package
turns them into text, and no module here or elsewhere builds SQL from f-strings.
Every wait on the database, the kit's included, keeps to the process's :class:`Budget`
(:mod:`carebridge.db.deadlines` for the engine's connections).
"""

from __future__ import annotations

from carebridge.db.base import NAMING_CONVENTION, Base
from carebridge.db.budget import CLIENT_GRACE_SECONDS, IDLE_IN_TRANSACTION_SECONDS, Budget
from carebridge.db.direct import DirectStatement
from carebridge.db.engine import KEEPALIVES, PING_AFTER_IDLE_SECONDS, make_engine, safe_url
from carebridge.db.errors import (
    TRANSIENT_SQLSTATES,
    DatabaseError,
    DatabaseUnavailableError,
    OutcomeUnknownError,
    describe_error,
    outcome_unknown,
    unavailable,
)
from carebridge.db.loop_pool import DATABASE_ERRORS, LoopConnections
from carebridge.db.sessions import make_sessionmaker, transaction, widen
from carebridge.db.together import FromGate, Gate, Rows, gated, insert_gated, insert_together

__all__ = [
    "CLIENT_GRACE_SECONDS",
    "DATABASE_ERRORS",
    "IDLE_IN_TRANSACTION_SECONDS",
    "KEEPALIVES",
    "NAMING_CONVENTION",
    "PING_AFTER_IDLE_SECONDS",
    "TRANSIENT_SQLSTATES",
    "Base",
    "Budget",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DirectStatement",
    "FromGate",
    "Gate",
    "LoopConnections",
    "OutcomeUnknownError",
    "Rows",
    "describe_error",
    "gated",
    "insert_gated",
    "insert_together",
    "make_engine",
    "make_sessionmaker",
    "outcome_unknown",
    "safe_url",
    "transaction",
    "unavailable",
    "widen",
]
