"""Rows for several tables written in one statement (:func:`insert_together`), or only
when a claim succeeds (:func:`insert_gated`): one round trip on a hot path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect, Table, insert, text
from sqlalchemy.orm import Session
from sqlalchemy.types import String, TypeEngine

from carebridge.db.direct import DirectStatement, connection_of

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
    connection = connection_of(session)
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
    connection = connection_of(session)
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
