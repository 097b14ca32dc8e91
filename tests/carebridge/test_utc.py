"""carebridge.utc: the clock is aware UTC, and a UtcDateTime column gives back aware UTC
moments on SQLite (which keeps the digits only) with the schema DateTime(timezone=True)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import Column, DateTime, Integer, MetaData, Table, create_engine, insert, select

from carebridge.utc import UtcDateTime, utcnow

_TABLE = Table(
    "moments", MetaData(), Column("id", Integer, primary_key=True), Column("at", UtcDateTime)
)


def test_now_is_aware_utc() -> None:
    now = utcnow()
    assert now.tzinfo is UTC
    assert abs(datetime.now(UTC) - now) < timedelta(seconds=5)


def test_the_column_is_datetime_with_time_zone() -> None:
    impl = UtcDateTime().impl
    assert isinstance(impl, DateTime) and impl.timezone


def test_sqlite_gives_back_the_same_moment_aware_in_utc() -> None:
    engine = create_engine("sqlite://")
    _TABLE.metadata.create_all(engine)
    elsewhere = datetime(2026, 12, 7, 9, 30, tzinfo=timezone(timedelta(hours=-5)))
    naive_utc = datetime(2026, 12, 7, 14, 31)
    with engine.begin() as connection:
        connection.execute(
            insert(_TABLE),
            [{"id": 1, "at": elsewhere}, {"id": 2, "at": naive_utc}, {"id": 3, "at": None}],
        )
        rows = dict(connection.execute(select(_TABLE.c.id, _TABLE.c.at)).all())
        # Compared in SQL as UTC too: 14:30 UTC is before 14:31 UTC.
        earlier = connection.execute(
            select(_TABLE.c.id).where(_TABLE.c.at < datetime(2026, 12, 7, 14, 31, tzinfo=UTC))
        ).all()
    assert rows[1] == elsewhere and rows[1].tzinfo is UTC
    assert rows[2] == naive_utc.replace(tzinfo=UTC)
    assert rows[3] is None
    assert earlier == [(1,)]
