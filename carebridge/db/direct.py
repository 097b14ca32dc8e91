"""Hot statements run past SQLAlchemy's execution machinery (:class:`DirectStatement`)."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Sequence
from typing import Any, cast

import asyncpg
from psycopg.pq import ExecStatus
from sqlalchemy import Connection, Dialect
from sqlalchemy.exc import ArgumentError, DBAPIError, StatementError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler


def connection_of(session: Session | Connection) -> Connection:
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
    - a database error is raised as SQLAlchemy raises it (its :class:`DBAPIError`
      subclass, parameters hidden as the engine hides them), and a connection the
      driver reports gone is invalidated, as SQLAlchemy would (see :func:`_translated`).

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
        connection = connection_of(session)
        if connection.dialect.name != "postgresql":
            return connection.execute(self.statement, params).all()
        return self._run(connection, params)

    def first(self, session: Session | Connection, params: dict[str, Any]) -> Any:
        """The first row (attributes named like the columns), or None."""
        connection = connection_of(session)
        if connection.dialect.name != "postgresql":
            return connection.execute(self.statement, params).first()
        return self._first_of(self._run(connection, params))

    def named_rows(self, session: Session | Connection, params: dict[str, Any]) -> list[Any]:
        """All rows of a SELECT, as named tuples (attributes named like the columns)."""
        connection = connection_of(session)
        found = (
            connection.execute(self.statement, params).all()
            if connection.dialect.name != "postgresql"
            else self._run(connection, params)
        )
        make = self._named._make
        return [make(row) for row in found]

    async def rows_on(
        self, connection: asyncpg.Connection, dialect: Dialect, params: dict[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """Run on an asyncpg connection (:class:`carebridge.db.loop_pool.LoopConnections`), compiled
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
            raise _translated(connection, exc, sql, values, cursor) from exc
        finally:
            if cursor is not None:
                cursor.close()


def _translated(
    connection: Connection, error: Exception, sql: str, values: dict[str, Any], cursor: Any
) -> StatementError:
    """The error SQLAlchemy would raise for a driver's ``error``, through its public API:
    wrapped by :meth:`DBAPIError.instance` (an IntegrityError stays one), and, when the
    dialect says the connection is gone, that connection invalidated (the session's
    transaction then can only roll back, and the pool connects afresh) with
    ``connection_invalidated`` set, which :func:`carebridge.db.unavailable` reads.

    Not done, as SQLAlchemy would: the engine's ``handle_error`` listeners (none is
    registered here), and the pool's other connections discarded at once on a
    disconnect: each is pinged before use after a second idle, and the first that fails
    its ping discards the rest (:func:`carebridge.db.engine.make_engine`).
    """
    dialect = connection.dialect
    gone = not connection.invalidated and dialect.is_disconnect(
        cast(Any, error), connection.connection.dbapi_connection, cursor
    )
    wrapped = DBAPIError.instance(
        sql,
        values,
        error,
        dialect.loaded_dbapi.Error,
        hide_parameters=connection.engine.hide_parameters,
        connection_invalidated=gone,
        dialect=dialect,
    )
    if gone:
        connection.invalidate(error)
    return wrapped
