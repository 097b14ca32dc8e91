"""PostgreSQL connections for work done on the event loop itself, no worker thread.

A hot path whose statements are few and known up front (a token grant: read the code,
then one statement that claims it and stores what it gives) awaits them here, on the
event loop, in autocommit: each statement is its own transaction, so a write that must
be atomic is one statement (:func:`carebridge.db.together.gated`). Everything else keeps the
SQLAlchemy engine, its pool and worker threads.

The driver is asyncpg, not the engine's psycopg: measured side by side, a refresh or a
code exchange answered here costs about 30% less CPU than in a worker thread with a
transaction, where psycopg's async connections saved about 15% (asyncpg keeps one
protocol object on the socket; psycopg's registers the socket with the loop for every
wait). Statements are compiled by SQLAlchemy for asyncpg's dialect
(:meth:`carebridge.db.direct.DirectStatement.rows_on`).

The pool is a fixed number of slots, each empty or holding a connection, taken in turn.
Not ``asyncpg.create_pool``: side by side (bench/loop_pool.py, figures in
docs/architecture.md, "The speed kit"), asyncpg's pool took about 20% more CPU for the
pool and driver and about three times the p99, its queue letting a newcomer take a freed
connection before a task that had waited.
A connection that failed, or that a cancelled task left mid-statement, is closed and its
slot emptied; the next user connects afresh. A failure to connect closes the pool to new work for
:data:`RETRY_AFTER_SECONDS` (the callers then use the engine, which has its own retry),
so a database that is down is not dialled for every request, queued ones included.

Waits keep to the web process's budget (:class:`carebridge.db.budget.Budget`, as the engine
does): for a free connection and for connecting, at most the budget; each statement,
the server's ``statement_timeout`` and ``lock_timeout`` of the budget, and asyncpg's
own clock a grace later (a server that stopped answering); a wait that ran out raises
TimeoutError. The pool belongs to the event loop that first uses it;
:meth:`LoopConnections.usable` says whether the running loop is that one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy import Dialect
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import URL

from carebridge.db.budget import Budget

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5.0

# What the pool raises, and callers catch, when the database fails: the server's errors,
# the driver's (a connection closed under it included), and the network's.
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class LoopConnections:
    def __init__(self, url: URL, size: int, budget: Budget | None = None) -> None:
        # SQLAlchemy's URL, as asyncpg reads it: user, password, host, port, database and
        # libpq's ssl* options; any other option is sent to the server as a setting, save
        # libpq's connect_timeout, taken here.
        query = dict(url.query)
        self._budget = budget or Budget()
        self._timeout = min(
            float(str(query.pop("connect_timeout", self._budget.connect_seconds))),
            self._budget.seconds,
        )
        dsn = url.set(drivername="postgresql", query=query)
        self._dsn = dsn.render_as_string(hide_password=False)
        self._size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        # Free slots (None: not connected), and the tasks waiting for one, served in
        # turn: a slot freed goes to the longest waiting, never to a task that came
        # later (asyncio.Queue lets a newcomer take it first, which left some requests
        # waiting many turns: p99 four times p50).
        self._free: list[asyncpg.Connection | None] = [None] * size
        self._waiting: collections.deque[asyncio.Future[asyncpg.Connection | None]] = (
            collections.deque()
        )
        self._closed = False
        self._retry_at = 0.0
        # The dialect :meth:`carebridge.db.DirectStatement.rows_on` compiles for.
        self.dialect: Dialect = asyncpg_dialect()  # type: ignore[no-untyped-call]

    def usable(self) -> bool:
        """Whether the running event loop may use these connections now: the first loop
        to ask owns them (another, as a test client's own loop, uses worker threads), and
        not while closed or waiting to retry after a failure to connect."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        return loop is self._loop and not self._closed and time.monotonic() >= self._retry_at

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection in autocommit, for the block. Raises one of
        :data:`DATABASE_ERRORS` when the database fails (connecting included), when no
        slot frees within the budget (TimeoutError), while waiting to retry after a
        failure to connect, or once closed; a connection that raised is closed, never
        reused. Ask :meth:`usable` first."""
        if self._loop is None:
            raise RuntimeError("ask LoopConnections.usable() first")
        if self._closed:
            raise ConnectionAbortedError("the event loop's connections are closed")
        connection = await asyncio.wait_for(self._take(), self._budget.seconds)
        try:
            if self._closed:
                raise ConnectionAbortedError("the event loop's connections are closed")
            if connection is None or connection.is_closed():
                connection = None
                if time.monotonic() < self._retry_at:
                    raise ConnectionRefusedError("waiting to retry connecting")
                connection = await self._connect()
            yield connection
        except BaseException:
            # Failed, or interrupted mid-statement (its state unknown): never reused.
            if connection is not None:
                connection.terminate()
            connection = None
            raise
        finally:
            if connection is not None and (self._closed or connection.is_in_transaction()):
                connection.terminate()
                connection = None
            self._give(connection)

    async def _take(self) -> asyncpg.Connection | None:
        if self._free and not self._waiting:
            return self._free.pop()
        turn: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            return await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._give(turn.result())  # handed over as the task was cancelled
            elif turn in self._waiting:  # (a slot freed meanwhile passed it over)
                self._waiting.remove(turn)
            raise

    def _give(self, connection: asyncpg.Connection | None) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(connection)
                return
        self._free.append(connection)

    async def _connect(self) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(
                self._dsn,
                timeout=self._timeout,
                command_timeout=self._budget.client_seconds,
                server_settings={
                    "application_name": "carebridge-loop",
                    **self._budget.server_settings(),
                },
            )
        except DATABASE_ERRORS as exc:
            self._retry_at = time.monotonic() + RETRY_AFTER_SECONDS
            # The type only: a driver's message can quote the connection string.
            logger.warning(
                "cannot connect for work on the event loop (%s); worker threads serve it "
                "for %.0f s",
                type(exc).__name__,
                RETRY_AFTER_SECONDS,
            )
            raise

    async def close(self) -> None:
        """Close the idle connections; any in use are closed as they come back."""
        self._closed = True
        free, self._free = self._free, []
        while self._waiting:  # they find it closed, and give their turn back
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
        for connection in free:
            if connection is not None:
                with contextlib.suppress(*DATABASE_ERRORS):
                    await connection.close(timeout=5)
