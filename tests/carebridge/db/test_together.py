"""carebridge.db.together: rows for several tables in one round trip, or only when a claim
succeeds (insert_gated)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, event, select, update
from sqlalchemy.exc import DataError

from carebridge.db import (
    FromGate,
    Gate,
    insert_gated,
    insert_together,
    make_engine,
    make_sessionmaker,
    transaction,
)
from tests.statements import statements

metadata = MetaData()
first = Table("together_a", metadata, Column("id", String(10), primary_key=True))
second = Table(
    "together_b",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("a_id", String(10)),
    Column("note", String(50)),
)


def test_rows_for_several_tables_are_written_in_one_statement_on_postgresql(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    metadata.create_all(engine)
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def count(*args: Any) -> None:
        statements.append(args[2])

    try:
        sessions = make_sessionmaker(engine)
        with transaction(sessions) as session:
            session.connection()  # begun: only our statements are counted below
            statements.clear()
            insert_together(
                session,
                [(first, {"id": "a1"}), (second, {"id": 1, "a_id": "a1", "note": "it's; fine"})],
            )
            insert_together(
                session,
                [(first, {"id": "a2"}), (second, {"id": 2, "a_id": "a2", "note": None})],
            )
        expected = 2 if engine.dialect.name == "postgresql" else 4
        assert len(statements) == expected
        with engine.connect() as connection:
            assert connection.execute(select(first.c.id).order_by(first.c.id)).scalars().all() == [
                "a1",
                "a2",
            ]
            rows = connection.execute(select(second).order_by(second.c.id)).all()
        assert [tuple(row) for row in rows] == [(1, "a1", "it's; fine"), (2, "a2", None)]
    finally:
        metadata.drop_all(engine)
        engine.dispose()


def test_a_column_the_table_does_not_have_is_refused(database_url: str) -> None:
    engine = make_engine(database_url)
    metadata.create_all(engine)
    try:
        sessions = make_sessionmaker(engine)
        with pytest.raises(ValueError, match="no column"), transaction(sessions) as session:
            insert_together(session, [(first, {"id": "a"}), (second, {"id": 1, "oops": 1})])
    finally:
        metadata.drop_all(engine)
        engine.dispose()


counter = Table(
    "together_counter",
    metadata,
    Column("id", String(10), primary_key=True),
    Column("last", Integer, nullable=False),
)
_BUMP = Gate(
    update(counter)
    .where(counter.c.id == bindparam("counter"))
    .values(last=counter.c.last + 1)
    .returning(counter.c.id, counter.c.last)
    .cte("bumped"),
    ("last",),
)


def test_gated_rows_go_in_with_the_gates_values_in_one_statement(postgres_database: str) -> None:
    engine = make_engine(postgres_database)
    metadata.create_all(engine)
    try:
        sessions = make_sessionmaker(engine)
        with transaction(sessions) as session:
            session.execute(counter.insert().values(id="c", last=0))
            session.execute(first.insert().values(id="a1"))
            # As the driver gets them: direct statements skip SQLAlchemy's events.
            with statements(engine) as seen:
                row = insert_gated(
                    session,
                    _BUMP,
                    {"counter": "c"},
                    [(second, {"id": FromGate("last"), "a_id": "a1", "note": "first"})],
                )
                assert row is not None and tuple(row) == (1,)
                # A gate that yields nothing writes nothing.
                missing = insert_gated(
                    session,
                    _BUMP,
                    {"counter": "nope"},
                    [(second, {"id": FromGate("last"), "a_id": "a1", "note": "never"})],
                )
                assert missing is None
        assert len(seen) == 2
        with engine.connect() as connection:
            rows = connection.execute(select(second)).all()
            assert [tuple(r) for r in rows] == [(1, "a1", "first")]
            assert connection.execute(select(counter.c.last)).scalar_one() == 1
    finally:
        metadata.drop_all(engine)
        engine.dispose()


def test_a_value_too_long_for_its_column_is_refused_not_cut(postgres_database: str) -> None:
    # Parameters of a gated insert are typed for PostgreSQL, but strings are not cast to
    # the column's varchar(n): that cast would truncate without an error.
    engine = make_engine(postgres_database)
    metadata.create_all(engine)
    try:
        sessions = make_sessionmaker(engine)
        with transaction(sessions) as session:
            session.execute(counter.insert().values(id="c", last=0))
            session.execute(first.insert().values(id="a1"))
        with pytest.raises(DataError), transaction(sessions) as session:
            insert_gated(
                session,
                _BUMP,
                {"counter": "c"},
                [(second, {"id": FromGate("last"), "a_id": "a1", "note": "x" * 51})],
            )
        with engine.connect() as connection:
            assert connection.execute(select(second)).all() == []
    finally:
        metadata.drop_all(engine)
        engine.dispose()


def test_gated_inserts_need_postgresql_and_a_gate(database_url: str) -> None:
    engine = make_engine(database_url)
    metadata.create_all(engine)
    try:
        sessions = make_sessionmaker(engine)
        gated = [(second, {"id": FromGate("last"), "a_id": "a1"})]
        with pytest.raises(ValueError, match="insert_gated"), transaction(sessions) as session:
            insert_together(session, [(first, {"id": "a1"}), *gated])
        if engine.dialect.name != "postgresql":
            with pytest.raises(NotImplementedError), transaction(sessions) as session:
                insert_gated(session, _BUMP, {"counter": "c"}, gated)
    finally:
        metadata.drop_all(engine)
        engine.dispose()
