"""Rows for several tables written in one statement (:func:`insert_together`), or only
when a claim succeeds (:func:`insert_gated`): one round trip on a hot path."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CTE, JSON, Connection, Dialect, Table, bindparam, cast, insert, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable
from sqlalchemy.types import String

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
    """What gates an insert: ``claim``, a CTE (a data-modifying one, as
    ``update(...).returning(...).cte("claimed")``) whose rows the insert's rows go in
    once for each of; ``also``, CTEs run with it (reading the claim, say); the statement
    answers with the claim's ``returning`` columns. Core constructs, built once: a gate
    is part of the key its statement is compiled under."""

    claim: CTE
    returning: tuple[str, ...]
    also: tuple[CTE, ...] = ()


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
    """The values to bind (PostgreSQL's direct statements): JSON as its text (the driver
    is given no SQLAlchemy type processing; :func:`_bound` casts it back)."""
    return {
        f"p{n}_{column}": json.dumps(value) if isinstance(table.c[column].type, JSON) else value
        for n, (table, values) in enumerate(rows)
        for column, value in values.items()
        if not isinstance(value, FromGate)
    }


def _bound(n: int, column: str, table: Table) -> Any:
    """A row's value, bound and typed like its column: PostgreSQL takes an untyped
    parameter in a SELECT list as text, which asyncpg then refuses to send a datetime
    as; the PostgreSQL dialects cast a typed one (``::TIMESTAMP WITH TIME ZONE``).
    Strings are bound as plain ``VARCHAR``: a cast to ``varchar(n)`` would cut a value
    silently; text assigned to the column fails when too long, as a plain insert does.
    JSON goes as text cast to the column's type (an event's data, an outbox payload)."""
    column_type = table.c[column].type
    if isinstance(column_type, JSON):
        return cast(bindparam(f"p{n}_{column}", type_=String()), column_type)
    return bindparam(
        f"p{n}_{column}", type_=String() if isinstance(column_type, String) else column_type
    )


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
    if statement is None:
        statement = _TOGETHER[shape] = DirectStatement(_together(gate, rows))
    return statement


def _together(gate: Gate | None, rows: Rows) -> Executable:
    """The rows as one statement of Core constructs: each insert a data-modifying CTE
    (``WITH w0 AS (INSERT ...)``), rendered whether or not anything reads it
    (``add_cte``). Without a gate, the last row's INSERT is the statement; with one,
    each row is inserted from a SELECT over the gate's claim (one row per claimed row),
    and the statement answers with the claim's ``returning`` columns."""
    if gate is None:
        inserts = [
            insert(table).values({column: _bound(n, column, table) for column in values})
            for n, (table, values) in enumerate(rows)
        ]
        ctes = [statement.cte(f"w{n}") for n, statement in enumerate(inserts[:-1])]
        return inserts[-1].add_cte(*ctes)
    claim = gate.claim
    ctes = []
    for n, (table, values) in enumerate(rows):
        sources = select(
            *(
                claim.c[value.column] if isinstance(value, FromGate) else _bound(n, column, table)
                for column, value in values.items()
            )
        ).select_from(claim)
        ctes.append(insert(table).from_select(list(values), sources).cte(f"w{n}"))
    return select(*(claim.c[name] for name in gate.returning)).add_cte(*gate.also, *ctes)
