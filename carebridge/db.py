"""Database engine, sessions and the declarative base every package's models use.

SQLite is the embedded default, PostgreSQL production. On SQLite every transaction starts
with ``BEGIN IMMEDIATE``: writers queue on the database lock (for ``busy_timeout``) instead
of failing with ``SQLITE_BUSY`` when a read transaction later tries to write, which is
what a web process with several threads does all day.

Every wait on the database is bounded by the process's :class:`Budget` (its role's:
web requests, the worker, the CLI): see :func:`make_engine`.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections import namedtuple
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import psycopg
from psycopg.pq import ExecStatus
from sqlalchemy import (
    Connection,
    Dialect,
    Engine,
    MetaData,
    Table,
    create_engine,
    event,
    insert,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    InvalidatePoolError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import String, TypeEngine

from carebridge import db_deadlines

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DatabaseError(Exception):
    """The database is unreachable or refused an operation; the message is one safe line."""


class DatabaseUnavailableError(DatabaseError):
    """The database did not answer within the budget, or cannot be reached for now:
    nothing was done, and the same request may succeed later (HTTP 503)."""


class OutcomeUnknownError(DatabaseError):
    """A write was sent and its answer lost (the connection went away as it ran): it may
    have been done. Never "try again" (a retry would do it twice): HTTP 500."""


def outcome_unknown(exc: BaseException) -> bool:
    """Whether ``exc`` says a write may or may not have been done: a COMMIT cut off by the
    client's deadline or a lost connection (:mod:`carebridge.db_deadlines`), or a write
    that reported :class:`OutcomeUnknownError` (a token claim on the event loop)."""
    if isinstance(exc, OutcomeUnknownError):
        return True
    return isinstance(exc, DBAPIError) and isinstance(
        exc.orig, db_deadlines.CommitOutcomeUnknownError
    )


# PostgreSQL's conditions that say "not now" rather than "not this": query_canceled (a
# statement or the client's cancel past the budget), lock_not_available (lock_timeout),
# too_many_connections, admin_shutdown, crash_shutdown, cannot_connect_now; and every
# connection_exception (class 08). Everything else (a deadlock, a serialization failure,
# a program limit, disk full, an I/O error) is a fault someone must look at: a 500 with
# its traceback, never a 503 a client retries into the same fault.
TRANSIENT_SQLSTATES = frozenset({"57014", "55P03", "53300", "57P01", "57P02", "57P03"})


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unavailable for now (too slow, unreachable,
    locked) rather than that the request or the code is wrong: a 503, not a 500.

    On PostgreSQL: a connection lost or refused (the driver's own errors carry no
    SQLSTATE; the server's class 08), a pooled connection not free in time, or one of
    :data:`TRANSIENT_SQLSTATES`. SQLite says so for a lock it waited on in vain, and
    otherwise (a missing table, bad SQL) uses the same class for mistakes, which stay
    500s. A write whose outcome is unknown is never "unavailable": see
    :func:`outcome_unknown`.
    """
    if isinstance(exc, DatabaseUnavailableError | PoolTimeoutError):
        return True
    if not isinstance(exc, DBAPIError) or outcome_unknown(exc):
        return False
    if exc.connection_invalidated:
        return True
    original = exc.orig
    if isinstance(original, sqlite3.OperationalError):
        return str(original).startswith(("database is locked", "database table is locked"))
    if not isinstance(original, psycopg.OperationalError):
        return False
    sqlstate = original.sqlstate
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in TRANSIENT_SQLSTATES


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
    :data:`CLIENT_GRACE_SECONDS` later (:mod:`carebridge.db_deadlines`), and connecting
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


def describe_error(exc: BaseException) -> str:
    """One line about a driver error, without SQL, parameters or credentials."""
    original = getattr(exc, "orig", None) or exc
    first_line = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return first_line or type(original).__name__


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(budget: Budget) -> Any:
    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not pysqlite, decide when transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # A lock held by another (a long CLI import) is waited for this long, then
        # "database is locked": a 503 for a web request.
        cursor.execute(f"PRAGMA busy_timeout={round(budget.seconds * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return pragmas


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


# TCP keepalives on every PostgreSQL connection: a peer gone without a word (a host
# lost, a failover behind a firewall that drops instead of resetting) is noticed on an
# idle pooled connection within about 25 s, and firewalls keep idle connections open.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def make_engine(url: str, budget: Budget | None = None) -> Engine:
    """The engine of a process whose role has ``budget`` (default: a web process's).

    On PostgreSQL every wait is bounded: connecting (libpq ``connect_timeout``), a
    pooled connection (``pool_timeout``), each statement and lock wait (the server's
    ``statement_timeout``, ``lock_timeout``; a transaction left idle,
    ``idle_in_transaction_session_timeout``), and on the client a wait the server never
    answers (:mod:`carebridge.db_deadlines`; bytes left unacknowledged,
    ``tcp_user_timeout``). Options the URL sets itself win, save the server settings,
    which are added to its own ``options``.
    """
    budget = budget or Budget()
    if url.startswith("sqlite"):
        # A file's pool of connections is waited for within the budget too (an in-memory
        # database has one connection per thread, nothing to wait for).
        memory = make_url(url).database in (None, "", ":memory:")
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": budget.seconds},
            # A failed statement's error would carry its bound values into the log.
            hide_parameters=True,
            **({} if memory else {"pool_timeout": budget.pool_seconds}),
        )
        event.listen(engine, "connect", _sqlite_pragmas(budget))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    query = make_url(url).query
    settings = " ".join(f"-c {name}={value}" for name, value in budget.server_settings().items())
    given = query.get("options")
    defaults: dict[str, Any] = {
        "connect_timeout": budget.connect_seconds,
        "application_name": f"carebridge-{budget.role}",
        **KEEPALIVES,
        "tcp_user_timeout": round(budget.client_seconds * 1000),
    }
    connect_args = {name: value for name, value in defaults.items() if name not in query}
    connect_args["options"] = f"{given} {settings}" if isinstance(given, str) else settings
    engine = create_engine(
        url,
        # A failed statement's error would carry its bound values into the log.
        hide_parameters=True,
        pool_size=10,
        max_overflow=10,
        pool_timeout=budget.pool_seconds,
        connect_args=connect_args,
    )

    @event.listens_for(engine, "do_connect")
    def connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return db_deadlines.connect(budget.client_seconds, *cargs, **cparams)

    @event.listens_for(engine, "checkin")
    def role_limit(dbapi_connection: Any, _record: Any) -> None:
        # Back to the role's deadline, whatever one transaction widened it to (widen()).
        if dbapi_connection is not None:
            dbapi_connection.limit = budget.client_seconds

    _ping_when_idle(engine)
    return engine


# A pooled connection is checked with a round trip before use only if it sat idle longer
# than this (as HikariCP does): one used a moment ago is alive, and pinging it cost ~60 µs
# of every request. One found dead is replaced, and the pool's other connections as old
# are discarded too (a database restart killed them all). One that died within that
# moment fails its request; SQLAlchemy then does the same, and the next requests connect
# afresh.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    def fresh(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if getattr(dbapi_connection, "ended_by_deadline", False):
            # Shut down by its deadline as its statement finished (answered normally, so
            # never invalidated): never handed out again. The pool connects afresh.
            raise DisconnectionError("shut down by its deadline")
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        dialect = engine.dialect
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if getattr(dbapi_connection, "ended_by_deadline", False):
                # The database did not answer in the budget: the request fails now (the
                # pool drops this connection) instead of also waiting to reconnect.
                raise DatabaseUnavailableError("the database did not answer in time") from exc
            # The pool reconnects this slot; on a disconnect it also drops the connections
            # older than this one (SQLAlchemy's own pre-ping does the same).
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise InvalidatePoolError(type(exc).__name__) from exc
            raise DisconnectionError(type(exc).__name__) from exc

    event.listen(engine, "connect", fresh)
    event.listen(engine, "checkout", ping)
    event.listen(engine, "checkin", fresh)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(sessions: sessionmaker[Session], budget: Budget | None = None) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error.

    With ``budget``, this one transaction has that budget instead of its process's role
    (:func:`widen`): for the rare long job a web request starts (a roster import).
    """
    with sessions.begin() as session:
        if budget is not None:
            widen(session, budget)
        yield session


def widen(session: Session, budget: Budget) -> None:
    """Give the rest of the session's transaction ``budget``: its statements' and lock
    waits' bounds on PostgreSQL (``SET LOCAL``: until the transaction ends) and the
    client's deadline on its waits, its COMMIT included (until the connection returns to
    the pool, which restores its role's). One round trip. On SQLite there is nothing to
    widen: the transaction already holds the write lock (``BEGIN IMMEDIATE``), and a
    statement has no time limit there.
    """
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return
    milliseconds = str(round(budget.seconds * 1000))
    connection.execute(
        text(
            "SELECT set_config('statement_timeout', :ms, true),"
            " set_config('lock_timeout', :ms, true)"
        ),
        {"ms": milliseconds},
    )
    driver = connection.connection.driver_connection
    if isinstance(driver, db_deadlines.WatchedConnection):
        driver.limit = budget.client_seconds


def _connection(session: Session | Connection) -> Connection:
    """The connection a statement runs on: a Session's, in its transaction, or the one given."""
    return session if isinstance(session, Connection) else session.connection()


class DirectStatement:
    """A hot statement run straight on the session's DBAPI connection on PostgreSQL (or on
    a given SQLAlchemy connection's, in its transaction, where no Session is needed).

    SQLAlchemy's execution machinery (cache lookup, parameter processing, execution
    context, result object) costs ~70 µs a statement here: more than a cheap statement
    itself. The few statements every message post and read, and every token grant, runs
    skip it on PostgreSQL:

    - the statement is compiled once, to SQLAlchemy's own SQL for the dialect;
    - it runs in the session's transaction, on the session's connection;
    - rows come back as plain tuples (:meth:`first`: named ones), read in PostgreSQL's
      binary format;
    - a database error is raised as SQLAlchemy raises it, and a connection the driver
      reports gone is invalidated, as SQLAlchemy would.

    SQLAlchemy's events and echo do not see these statements; parameters pass to the driver
    as given and rows come back as the driver reads them: only for statements whose
    parameters and columns need no SQLAlchemy type processing (strings, numbers, bytes,
    aware datetimes; no enums or type decorators). A parameter the statement needs and
    the call lacks is an error, as in SQLAlchemy. Elsewhere (SQLite) they run through
    SQLAlchemy as usual.
    """

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        # Per dialect: SQL, the values it binds itself, the names the caller must give,
        # and the parameters' order for a positional driver (asyncpg).
        self._compiled: dict[
            Dialect, tuple[str, dict[str, Any], frozenset[str], tuple[str, ...]]
        ] = {}
        # Rows of a SELECT as named tuples, named like its columns.
        columns = getattr(statement, "selected_columns", None)
        names = list(columns.keys()) if columns is not None else []
        self._named: Any = namedtuple("Row", names) if names else None

    def rows(
        self, session: Session | Connection, params: dict[str, Any]
    ) -> Sequence[Sequence[Any]]:
        connection = _connection(session)
        if connection.dialect.name != "postgresql":
            return connection.execute(self.statement, params).all()
        return self._run(connection, params)

    def first(self, session: Session | Connection, params: dict[str, Any]) -> Any:
        """The first row (attributes named like the columns), or None."""
        connection = _connection(session)
        if connection.dialect.name != "postgresql":
            return connection.execute(self.statement, params).first()
        return self._first_of(self._run(connection, params))

    async def rows_on(
        self, connection: asyncpg.Connection, dialect: Dialect, params: dict[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """Run on an asyncpg connection (:class:`carebridge.loop_connections`), compiled
        for ``dialect`` (that module's): as :meth:`rows` does on PostgreSQL, in that
        connection's mode (autocommit there). A database error is the driver's own."""
        sql, values = self._sql(dialect, params)
        positions = self._compiled[dialect][3]
        found = await connection.fetch(sql, *(values[name] for name in positions))
        return cast(Sequence[Sequence[Any]], found)

    async def first_on(
        self, connection: asyncpg.Connection, dialect: Dialect, params: dict[str, Any]
    ) -> Any:
        """:meth:`first`, on an asyncpg connection (see :meth:`rows_on`)."""
        return self._first_of(await self.rows_on(connection, dialect, params))

    def _first_of(self, found: Sequence[Sequence[Any]]) -> Any:
        if not found:
            return None
        return self._named._make(found[0]) if self._named is not None else found[0]

    def _sql(self, dialect: Dialect, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The statement's SQL for ``dialect`` (compiled once) and the values to bind."""
        compiled = self._compiled.get(dialect)
        if compiled is None:
            done = cast(SQLCompiler, cast(ClauseElement, self.statement).compile(dialect=dialect))
            binds = done.binds
            # Values the statement binds itself (literals SQLAlchemy turned into
            # parameters); the others the caller must give.
            required = frozenset(name for name, bind in binds.items() if bind.required)
            defaults = {k: v for k, v in done.params.items() if k not in required}
            positions = tuple(done.positiontup or ())
            compiled = self._compiled[dialect] = (str(done), defaults, required, positions)
        sql, defaults, required, _ = compiled
        if not required <= params.keys():
            missing = sorted(required - params.keys())
            raise ArgumentError(f"a value is required for the parameter {missing[0]!r}")
        return sql, {**defaults, **params}

    def _run(self, connection: Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        dialect = connection.dialect
        sql, values = self._sql(dialect, params)
        cursor = None
        try:
            driver: Any = connection.connection.driver_connection
            cursor = driver.cursor(binary=True)
            cursor.execute(sql, values)
            # Rows, if the statement returns any (the status, not .description: that
            # builds a column object for every column).
            result = cursor.pgresult
            return cursor.fetchall() if result and result.status == ExecStatus.TUPLES_OK else []
        except dialect.loaded_dbapi.Error as exc:
            # SQLAlchemy's own handling (pinned): the wrapped error, invalidation on a
            # disconnect, the handle_error event.
            connection._handle_dbapi_exception(exc, sql, values, cursor, None)
            raise  # not reached: the call above raises
        finally:
            if cursor is not None:
                cursor.close()


# Rows for several tables, inserted together (see insert_together).
Rows = Sequence[tuple[Table, dict[str, Any]]]
_TOGETHER: dict[tuple[object, ...], DirectStatement] = {}


@dataclass(frozen=True)
class FromGate:
    """A value that :func:`insert_gated` takes from its gate's row (``column``)."""

    column: str


@dataclass(frozen=True)
class Gate:
    """The leading CTEs of a gated insert: ``ctes`` defines them (``name AS (...)``,
    data-modifying ones included); the rows go in once for each row of the one called
    ``name``, and the statement answers with its ``returning`` columns."""

    ctes: str
    name: str
    returning: tuple[str, ...]


def insert_together(session: Session | Connection, rows: Rows) -> None:
    """Insert one row into each of several tables, in the session's transaction.

    On PostgreSQL they go in one statement (data-modifying CTEs, ``WITH w0 AS (INSERT
    ...) INSERT ...``), so one round trip: a hot path writing a message, its
    notification and its audit record pays for one statement, not three. Elsewhere, one
    INSERT each. Columns left out take their server-side defaults on PostgreSQL, so
    callers pass every value that has a Python-side default.
    """
    if not rows:
        return
    _check(rows, gated=False)
    connection = _connection(session)
    if connection.dialect.name != "postgresql" or len(rows) == 1:
        for table, values in rows:
            connection.execute(insert(table), values)
        return
    connection.execute(_statement(connection.dialect, None, rows).statement, _params(rows))


def insert_gated(
    session: Session | Connection, gate: Gate, params: dict[str, Any], rows: Rows
) -> tuple[Any, ...] | None:
    """PostgreSQL: run ``gate`` (with ``params``) and, if its gating CTE yields a row,
    insert ``rows`` with the values marked :class:`FromGate` taken from it, all in one
    statement (a :class:`DirectStatement`). Returns that row, or None when nothing was
    written.

    For a hot path whose rows depend on a claim (the next number in a sequence, say)
    that may fail: one round trip where a claim and then an insert would take two.
    """
    connection = _connection(session)
    statement, values = gated(connection.dialect, gate, params, rows)
    found = statement.rows(connection, values)
    return tuple(found[0]) if found else None


def gated(
    dialect: Dialect, gate: Gate, params: dict[str, Any], rows: Rows
) -> tuple[DirectStatement, dict[str, Any]]:
    """The statement :func:`insert_gated` runs, and its values: for running it elsewhere
    (on an async connection, :meth:`DirectStatement.rows_on`)."""
    _check(rows, gated=True)
    if dialect.name != "postgresql":
        raise NotImplementedError("insert_gated needs PostgreSQL's data-modifying CTEs")
    values = _params(rows)
    if params.keys() & values.keys():
        raise ValueError("a gate parameter is named like a row value (p<n>_<column>)")
    return _statement(dialect, gate, rows), {**params, **values}


def _check(rows: Rows, *, gated: bool) -> None:
    for table, values in rows:
        unknown = [column for column in values if column not in table.c]
        if unknown:
            raise ValueError(f"{table.name} has no column {unknown[0]!r}")
        if not gated and any(isinstance(value, FromGate) for value in values.values()):
            raise ValueError("a value from a gate needs insert_gated")


def _params(rows: Rows) -> dict[str, Any]:
    return {
        f"p{n}_{column}": value
        for n, (_, values) in enumerate(rows)
        for column, value in values.items()
        if not isinstance(value, FromGate)
    }


def _typed(parameter: str, column_type: TypeEngine[Any], dialect: Dialect) -> str:
    """A parameter of a gated insert's SELECT list, typed: PostgreSQL takes an untyped
    one there as text, which asyncpg then refuses to send a datetime as. Strings stay
    text (a cast to ``varchar(n)`` would truncate silently; text assigned to the column
    fails when too long, as a plain insert does)."""
    if isinstance(column_type, String):
        return parameter
    return f"CAST({parameter} AS {column_type.compile(dialect)})"


def _statement(dialect: Dialect, gate: Gate | None, rows: Rows) -> DirectStatement:
    # Built once per shape: the tables, their columns, which values come from the gate.
    shape = (
        type(dialect),
        gate,
        *(
            (
                table,
                tuple(
                    (column, value.column if isinstance(value, FromGate) else None)
                    for column, value in values.items()
                ),
            )
            for table, values in rows
        ),
    )
    statement = _TOGETHER.get(shape)
    if statement is not None:
        return statement
    quote = dialect.identifier_preparer
    # Only the schema's own table and column names, quoted; every value is bound, or a
    # column of the gate's row.
    inserts = []
    for n, (table, values) in enumerate(rows):
        names = ", ".join(quote.quote(column) for column in values)
        sources = ", ".join(
            f"{gate.name}.{quote.quote(value.column)}"
            if gate is not None and isinstance(value, FromGate)
            else _typed(f":p{n}_{column}", table.c[column].type, dialect)
            for column, value in values.items()
        )
        into = f"INSERT INTO {quote.format_table(table)} ({names}) "
        inserts.append(
            f"{into}VALUES ({sources})"
            if gate is None
            else f"{into}SELECT {sources} FROM {gate.name}"  # noqa: S608
        )
    if gate is None:
        ctes = ", ".join(f"w{n} AS ({sql})" for n, sql in enumerate(inserts[:-1]))
        sql = f"WITH {ctes} {inserts[-1]}"
    else:
        ctes = ", ".join([gate.ctes, *(f"w{n} AS ({sql})" for n, sql in enumerate(inserts))])
        answer = ", ".join(quote.quote(column) for column in gate.returning)
        sql = f"WITH {ctes} SELECT {answer} FROM {gate.name}"  # noqa: S608
    statement = _TOGETHER[shape] = DirectStatement(text(sql))
    return statement
