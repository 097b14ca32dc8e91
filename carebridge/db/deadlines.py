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
reconnects; one whose statement finished at that very moment is never handed out again,
see :attr:`WatchedConnection.ended_by_deadline`).

The thread shuts down a descriptor of its own, duplicated when the connection was made
(:attr:`WatchedConnection.own_socket`), never libpq's: libpq closes its descriptor itself
when a read fails (the server went away), even in the middle of a wait that is still
registered, and that number may then already be another file's. Shutting a connection
down allocates nothing, so a process out of descriptors still has its deadlines; the
thread logs any failure and carries on, and is started again if it ever stopped.

A COMMIT cut off by its deadline, or by a lost connection, may have committed all the
same: it raises :class:`CommitOutcomeUnknownError`, which is never answered "try again"
(carebridge.db.errors.outcome_unknown).

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


class CommitOutcomeUnknownError(psycopg.OperationalError):
    """A COMMIT was sent and no answer came back (the client's deadline ended the wait,
    or the connection was lost): the server may have committed. A driver error, so
    SQLAlchemy wraps it and invalidates the connection as for any lost connection."""


@dataclass(eq=False)
class _Wait:
    connection: WatchedConnection
    deadline: float
    seconds: float


class Deadlines:
    """Ends waits past their deadline by shutting their connection's socket down."""

    def __init__(self) -> None:
        self._reset()
        # A forked child (gunicorn --preload, a fork after the database was used) has no
        # thread, and may hold a copy of the lock the parent's thread had taken: it starts
        # afresh. Its parent's waits are not its own.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._registered = threading.Condition(self._lock)
        self._waits: dict[int, _Wait] = {}
        self._thread: threading.Thread | None = None
        self._asleep = False

    def start(self, connection: WatchedConnection, seconds: float) -> _Wait | None:
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

    def close_socket(self, own: socket.socket) -> None:
        """Close a connection's own descriptor of its socket (:class:`WatchedConnection`)
        with the lock held: never while the thread is shutting it down, so the thread
        never meets its number reused."""
        with self._lock:
            own.close()

    def _wake(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._watch, name="carebridge-db-deadlines", daemon=True
            )
            self._thread.start()
        else:
            self._registered.notify()

    def _watch(self) -> None:
        try:
            idle = 0.0
            while True:
                try:
                    idle = self._look(idle)
                except Exception:
                    # Whatever it was, the waits still need their deadlines: log it and
                    # look again at the next tick.
                    log.exception("the database deadline thread failed; it carries on")
                time.sleep(TICK_SECONDS)
        finally:
            # Not reached but by a BaseException: the next wait to start starts a new one.
            with self._lock:
                self._thread = None
                self._asleep = False
            log.error("the database deadline thread stopped; the next wait starts another")

    def _look(self, idle: float) -> float:
        """End the waits past their deadline; how long none was registered, after."""
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
                    _shut_down(wait.connection)
                    ended.append(wait)
        for wait in ended:  # (not holding the lock every statement takes)
            log.warning(
                "the database did not answer within %.1f s: its connection was shut down",
                wait.seconds,
            )
        return idle


def _shut_down(connection: WatchedConnection) -> None:
    """Wake the thread waiting on this connection's socket with a lost connection,
    through the connection's own descriptor of it: nothing is allocated (a process out
    of descriptors still ends its waits), and libpq's descriptor, which libpq may have
    closed meanwhile, is not used. Called with the lock held, which
    :meth:`WatchedConnection.close` takes to close that descriptor."""
    connection.ended_by_deadline = True
    if connection.own_socket is not None:
        with contextlib.suppress(OSError):  # already shut down, or closed by the server
            connection.own_socket.shutdown(socket.SHUT_RDWR)


DEADLINES = Deadlines()


class WatchedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait on the server ends by :attr:`limit` seconds.

    Made by :func:`connect`; its cursors (:class:`WatchedCursor`,
    :class:`WatchedServerCursor`) register their waits the same way.
    """

    limit: float = DEFAULT_LIMIT
    # Set once a wait on it ran out of time and its socket was shut down; the pool hands
    # it out no more (carebridge.db), even when the wait's statement had just finished.
    ended_by_deadline: bool = False
    # The deadline thread's own descriptor of the connection's socket (see _shut_down).
    own_socket: socket.socket | None = None

    def commit(self) -> None:
        # A connection already lost sends no COMMIT: its transaction died with it.
        sent = not self.closed
        wait = DEADLINES.start(self, self.limit)
        try:
            super().commit()
        except psycopg.OperationalError as exc:
            # The server's own refusal (a SQLSTATE, the connection still there) means it
            # rolled back; an answer that never came leaves the outcome unknown.
            lost = self.ended_by_deadline or self.broken or exc.sqlstate is None
            if sent and lost:
                raise CommitOutcomeUnknownError(
                    "the connection was lost while committing: whether the transaction "
                    "committed is unknown"
                ) from exc
            raise
        finally:
            DEADLINES.end(wait)

    def rollback(self) -> None:
        wait = DEADLINES.start(self, self.limit)
        try:
            super().rollback()
        finally:
            DEADLINES.end(wait)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.own_socket is not None:
                DEADLINES.close_socket(self.own_socket)


def _start(cursor: psycopg.Cursor[Any] | psycopg.ServerCursor[Any]) -> _Wait | None:
    # The watched cursors are the factories of watched connections only (connect()).
    connection = cast(WatchedConnection, cursor.connection)
    return DEADLINES.start(connection, connection.limit)


@contextmanager
def _waiting(cursor: psycopg.Cursor[Any] | psycopg.ServerCursor[Any]) -> Iterator[None]:
    wait = _start(cursor)
    try:
        yield
    finally:
        DEADLINES.end(wait)


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
        wait = _start(self)
        try:
            # (A t-string query takes no params: passed on as it came.)
            plain = cast(QueryNoTemplate, query)
            return super().execute(plain, params, prepare=prepare, binary=binary)
        finally:
            DEADLINES.end(wait)

    def executemany(
        self, query: Query, params_seq: Iterable[Params], *, returning: bool = False
    ) -> None:
        with _waiting(self):
            super().executemany(query, params_seq, returning=returning)

    @contextmanager
    def copy(
        self, statement: Query, params: Params | None = None, *, writer: Writer | None = None
    ) -> Iterator[Copy]:
        # The whole COPY, its rows written in the block included, is one statement.
        with (
            _waiting(self),
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
        with _waiting(self):
            return super().execute(query, params, binary=binary, **kwargs)

    def fetchone(self) -> Any:
        with _waiting(self):
            return super().fetchone()

    def fetchmany(self, size: int = 0) -> list[Any]:
        with _waiting(self):
            return super().fetchmany(size)

    def fetchall(self) -> list[Any]:
        with _waiting(self):
            return super().fetchall()

    def __next__(self) -> Any:
        with _waiting(self):
            return super().__next__()

    def scroll(self, value: int, mode: str = "relative") -> None:
        with _waiting(self):
            super().scroll(value, mode)

    def close(self) -> None:
        with _waiting(self):
            super().close()


def connect(limit: float, *args: Any, **kwargs: Any) -> WatchedConnection:
    """``psycopg.connect``, for a connection whose waits end within ``limit`` seconds
    (connecting is bounded by libpq's ``connect_timeout``)."""
    connection = WatchedConnection.connect(*args, cursor_factory=WatchedCursor, **kwargs)
    try:
        connection.own_socket = socket.socket(fileno=os.dup(connection.fileno()))
    except OSError:
        connection.close()  # (out of descriptors: the connection fails, loudly)
        raise
    connection.server_cursor_factory = WatchedServerCursor
    connection.limit = limit
    return connection
