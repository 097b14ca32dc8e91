"""carebridge.db.direct: a statement run past SQLAlchemy's execution machinery still fails
as SQLAlchemy would, and reads its rows by their columns' names."""

from __future__ import annotations

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    literal_column,
    select,
    text,
)
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError

from carebridge.db import DirectStatement, make_engine, make_sessionmaker, transaction, unavailable

metadata = MetaData()
first = Table("direct_a", metadata, Column("id", String(10), primary_key=True))
second = Table(
    "direct_b",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("a_id", String(10)),
    Column("note", String(50)),
)
_ONE = DirectStatement(select(literal_column("1", Integer).label("one")))


def test_a_lost_connection_is_invalidated_as_sqlalchemy_would(postgres_database: str) -> None:
    engine = make_engine(postgres_database)
    sessions = make_sessionmaker(engine)
    try:
        with pytest.raises(DBAPIError) as raised, transaction(sessions) as session:  # noqa: PT012
            pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with engine.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            _ONE.rows(session, {})
        # SQLAlchemy's own error for a lost connection: a 503, the connection dropped.
        assert isinstance(raised.value, OperationalError)
        assert raised.value.connection_invalidated
        assert unavailable(raised.value)
        with transaction(sessions) as session:
            assert _ONE.rows(session, {}) == [(1,)]  # the pool connected afresh
    finally:
        engine.dispose()


def test_rows_are_read_by_their_columns_names_on_both_backends(database_url: str) -> None:
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    pair = DirectStatement(
        select(
            bindparam("a", type_=Integer).label("first"),
            (bindparam("b", type_=Integer) + 1).label("second"),
        )
    )
    try:
        with transaction(sessions) as session:
            (row,) = pair.named_rows(session, {"a": 1, "b": 2})
            assert (row.first, row.second) == (1, 3)
    finally:
        engine.dispose()


def test_a_direct_statement_runs_in_the_sessions_transaction(postgres_database: str) -> None:
    engine = make_engine(postgres_database)
    metadata.create_all(engine)
    names = DirectStatement(select(first.c.id).order_by(first.c.id))
    add = DirectStatement(first.insert().values(id=bindparam("id")))
    try:
        sessions = make_sessionmaker(engine)
        with transaction(sessions) as session:
            assert add.rows(session, {"id": "d1"}) == []
            assert names.rows(session, {}) == [("d1",)]
        # A failure is SQLAlchemy's error, and the transaction rolls back whole.
        with pytest.raises(IntegrityError), transaction(sessions) as session:  # noqa: PT012
            add.rows(session, {"id": "d2"})
            add.rows(session, {"id": "d1"})
        with transaction(sessions) as session:
            assert names.rows(session, {}) == [("d1",)]
            # A parameter left out is an error, not a NULL.
            with pytest.raises(ArgumentError, match="'id'"):
                add.rows(session, {})
    finally:
        metadata.drop_all(engine)
        engine.dispose()


def test_direct_statements_answer_alike_on_both_backends(database_url: str) -> None:
    engine = make_engine(database_url)
    metadata.create_all(engine)
    try:
        sessions = make_sessionmaker(engine)
        with transaction(sessions) as session:
            session.execute(second.insert().values(id=7, a_id="x", note="n"))
            found = DirectStatement(select(second).where(second.c.id == bindparam("id")))
            assert [tuple(row) for row in found.rows(session, {"id": 7})] == [(7, "x", "n")]
            row = found.first(session, {"id": 7})
            assert (row.id, row.a_id, row.note) == (7, "x", "n")
            assert found.first(session, {"id": 8}) is None
    finally:
        metadata.drop_all(engine)
        engine.dispose()
