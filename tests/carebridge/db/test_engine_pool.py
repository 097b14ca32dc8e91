"""Pooled PostgreSQL connections: one idle for a while is checked before use and replaced
if it died; one used a moment ago is not checked (its request fails if the database went
away in that moment, and the pool recovers for the next)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from carebridge.db import engine as db_engine
from carebridge.db import make_engine


def _backend(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _kill(url: str, pid: int) -> None:
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()


def test_an_idle_connection_is_checked_and_a_dead_one_replaced(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(postgres_database)
    try:
        first = _backend(engine)
        _kill(postgres_database, first)
        monkeypatch.setattr(db_engine, "PING_AFTER_IDLE_SECONDS", 0.0)  # every connection "idle"
        assert _backend(engine) != first  # checked, found dead, replaced: no error
    finally:
        engine.dispose()


def test_a_connection_used_a_moment_ago_is_not_checked(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(postgres_database)
    pings: list[Any] = []
    ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda c: pings.append(c) or ping(c))
    monkeypatch.setattr(db_engine, "PING_AFTER_IDLE_SECONDS", 3600.0)
    try:
        first = _backend(engine)
        _backend(engine)
        assert pings == []
        _kill(postgres_database, first)
        with pytest.raises(OperationalError):
            _backend(engine)  # the trade-off: this request fails
        assert _backend(engine) != first  # and the pool has recovered
    finally:
        engine.dispose()
