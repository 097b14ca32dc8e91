"""A client-side deadline on every wait for PostgreSQL (psycopg connections of the engine).

The server's ``statement_timeout`` ends a statement that runs too long, but only while
the server runs: a database that stopped answering (a frozen process or host, a
network path that drops packets without a reset) leaves the client waiting on its
socket for good. TCP keepalives and ``tcp_user_timeout`` notice a peer that is gone,
never one whose kernel still acknowledges every byte; libpq has no statement timeout of
its own and psycopg none that is public; a cancel request goes to the same frozen
server. So the client keeps its own clock.

Each connection (:class:`WatchedConnection`, with its cursors) registers every wait
(statement, COPY, server-side cursor fetch, commit, rollback) with one daemon thread per
process, :data:`DEADLINES`. A wait that outlives its connection's limit has its socket
shut down (``shutdown(2)``: the waiting thread wakes at once with a lost connection,
which SQLAlchemy treats as a disconnect: the connection is invalidated and the pool
reconnects). Nothing else is touched: the socket is only shut down, never closed, while
the connection is registered, so its descriptor cannot have been reused.

Cost per statement: a lock taken twice and a dict entry (about a microsecond). The
thread looks every :data:`TICK_SECONDS` while waits are registered, and sleeps when none
are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self, cast

import psycopg
from psycopg.abc import Params, Query, QueryNoTemplate
from psycopg.copy import Copy, Writer

log = logging.getLogger(__name__)

# How often the thread looks for waits past their deadline: how late one may be ended.
TICK_SECONDS = 0.1
# The thread sleeps once no wait was registered for this long.
SLEEP_AFTER_SECONDS = 10.0
# A connection's limit until :func:`connect` sets its own.
DEFAULT_LIMIT = 30.0


@dataclass(eq=False)
class _Wait:
    connection: psycopg.Connection[Any]
    deadline: float
    seconds: float


class Deadlines:
    """Ends waits past their deadline by shutting their connection's socket down."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._registered = threading.Condition(self._lock)
        self._waits: dict[int, _Wait] = {}
        self._thread: threading.Thread | None = None
        self._asleep = False

    def start(self, connection: psycopg.Connection[Any], seconds: float) -> _Wait | None:
        """A wait on ``connection`` that may last ``seconds`` begins; give what this
        returns to :meth:`end` when it does. A wait inside another (a call that waits
        within one already registered) runs under the outer one's deadline."""
        key = id(connection)
        with self._lock:
            if key in self._waits:
                return None
            wait = self._waits[key] = _Wait(connection, time.monotonic() + seconds, seconds)
            if self._asleep or self._thread is None:
                self._wake()
        return wait

    def end(self, wait: _Wait | None) -> None:
        if wait is None:
            return
        with self._lock:
            # Gone if the thread ended it; never another wait's entry.
            key = id(wait.connection)
            if self._waits.get(key) is wait:
                del self._waits[key]

    @contextmanager
    def waiting(self, connection: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
        wait = self.start(connection, seconds)
        try:
            yield
        finally:
            self.end(wait)

    def _wake(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._watch, name="carebridge-db-deadlines", daemon=True
            )
            self._thread.start()
        else:
            self._registered.notify()

    def _watch(self) -> None:
        idle = 0.0
        while True:
            ended = []
            with self._lock:
                if self._waits:
                    idle = 0.0
                else:
                    idle += TICK_SECONDS
                # Asleep only after a quiet while: under traffic, no statement pays for
                # waking this thread.
                if idle >= SLEEP_AFTER_SECONDS:
                    self._asleep = True
                    while not self._waits:
                        self._registered.wait()
                    self._asleep = False
                    idle = 0.0
                now = time.monotonic()
                for key, wait in list(self._waits.items()):
                    if wait.deadline <= now:
                        del self._waits[key]
                        _shut_down(wait)
                        ended.append(wait)
            for wait in ended:  # (not holding the lock every statement takes)
                log.warning(
                    "the database did not answer within %.1f s: its connection was shut down",
                    wait.seconds,
                )
            time.sleep(TICK_SECONDS)


def _shut_down(wait: _Wait) -> None:
    """Wake the thread waiting on this connection's socket with a lost connection. Called
    with the lock held, while the wait is registered: the connection is open, its
    descriptor its own."""
    try:
        descriptor = wait.connection.fileno()
    except psycopg.Error:
        return  # closed meanwhile: nothing waits on it
    if isinstance(wait.connection, WatchedConnection):
        wait.connection.ended_by_deadline = True
    # A duplicate descriptor of the same socket: shutdown acts on the socket, and closing
    # the duplicate leaves the connection's own descriptor alone.
    duplicate = socket.socket(fileno=os.dup(descriptor))
    try:
        with contextlib.suppress(OSError):
            duplicate.shutdown(socket.SHUT_RDWR)
    finally:
        duplicate.close()


DEADLINES = Deadlines()


class WatchedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait on the server ends by :attr:`limit` seconds.

    Made by :func:`connect`; its cursors (:class:`WatchedCursor`,
    :class:`WatchedServerCursor`) register their waits the same way.
    """

    limit: float = DEFAULT_LIMIT
    # Set once a wait on it ran out of time and its socket was shut down.
    ended_by_deadline: bool = False

    def commit(self) -> None:
        wait = DEADLINES.start(self, self.limit)
        try:
            super().commit()
        finally:
            DEADLINES.end(wait)

    def rollback(self) -> None:
        wait = DEADLINES.start(self, self.limit)
        try:
            super().rollback()
        finally:
            DEADLINES.end(wait)


def _limit(cursor: psycopg.Cursor[Any]) -> float:
    connection = cursor.connection
    return connection.limit if isinstance(connection, WatchedConnection) else DEFAULT_LIMIT


class WatchedCursor(psycopg.Cursor[Any]):
    """Client-side cursor: its rows arrive with :meth:`execute`, so fetching waits on
    nothing."""

    def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        wait = DEADLINES.start(self.connection, _limit(self))
        try:
            # (A t-string query takes no params: passed on as it came.)
            plain = cast(QueryNoTemplate, query)
            return super().execute(plain, params, prepare=prepare, binary=binary)
        finally:
            DEADLINES.end(wait)

    def executemany(
        self, query: Query, params_seq: Iterable[Params], *, returning: bool = False
    ) -> None:
        with DEADLINES.waiting(self.connection, _limit(self)):
            super().executemany(query, params_seq, returning=returning)

    @contextmanager
    def copy(
        self, statement: Query, params: Params | None = None, *, writer: Writer | None = None
    ) -> Iterator[Copy]:
        # The whole COPY, its rows written in the block included, is one statement.
        with (
            DEADLINES.waiting(self.connection, _limit(self)),
            super().copy(statement, params, writer=writer) as copy,
        ):
            yield copy


class WatchedServerCursor(psycopg.ServerCursor[Any]):
    """Named (server-side) cursor, as SQLAlchemy's ``yield_per`` uses: every fetch waits."""

    def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        binary: bool | None = None,
        **kwargs: Any,
    ) -> Self:
        with DEADLINES.waiting(self.connection, _limit(self)):
            return super().execute(query, params, binary=binary, **kwargs)

    def fetchone(self) -> Any:
        with DEADLINES.waiting(self.connection, _limit(self)):
            return super().fetchone()

    def fetchmany(self, size: int = 0) -> list[Any]:
        with DEADLINES.waiting(self.connection, _limit(self)):
            return super().fetchmany(size)

    def fetchall(self) -> list[Any]:
        with DEADLINES.waiting(self.connection, _limit(self)):
            return super().fetchall()

    def __next__(self) -> Any:
        with DEADLINES.waiting(self.connection, _limit(self)):
            return super().__next__()

    def scroll(self, value: int, mode: str = "relative") -> None:
        with DEADLINES.waiting(self.connection, _limit(self)):
            super().scroll(value, mode)

    def close(self) -> None:
        with DEADLINES.waiting(self.connection, _limit(self)):
            super().close()


def connect(limit: float, *args: Any, **kwargs: Any) -> WatchedConnection:
    """``psycopg.connect``, for a connection whose waits end within ``limit`` seconds
    (connecting is bounded by libpq's ``connect_timeout``)."""
    connection = WatchedConnection.connect(*args, cursor_factory=WatchedCursor, **kwargs)
    connection.server_cursor_factory = WatchedServerCursor
    connection.limit = limit
    return connection
