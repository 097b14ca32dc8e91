"""carebridge.db.direct: a statement run past SQLAlchemy's execution machinery still fails
as SQLAlchemy would, and reads its rows by their columns' names."""

from __future__ import annotations

import pytest
from sqlalchemy import Integer, bindparam, literal_column, select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from carebridge.db import DirectStatement, make_engine, make_sessionmaker, transaction, unavailable

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
