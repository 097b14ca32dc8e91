"""The SQL statements a block of code runs, as the database drivers receive them: hot
paths run some statements past SQLAlchemy (carebridge.db.DirectStatement), which its
events do not see, some of them on the event loop's asyncpg connections
(carebridge.db.loop_pool)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import psycopg
import pytest
from sqlalchemy import Engine, event


@contextmanager
def statements(engine: Engine, mentioning: str = "") -> Iterator[list[str]]:
    """The statements run inside the block whose SQL mentions ``mentioning``."""
    seen: list[str] = []

    def record(sql: Any) -> None:
        if mentioning in str(sql):
            seen.append(str(sql))

    if engine.dialect.name != "postgresql":

        def on_event(*args: Any) -> None:
            record(args[2])

        event.listen(engine, "before_cursor_execute", on_event)
        try:
            yield seen
        finally:
            event.remove(engine, "before_cursor_execute", on_event)
        return
    execute = psycopg.Cursor.execute

    def recording(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        record(query)
        return execute(self, query, *args, **kwargs)

    fetch = asyncpg.Connection.fetch

    async def fetching(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        record(query)
        return await fetch(self, query, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(psycopg.Cursor, "execute", recording)
        patch.setattr(asyncpg.Connection, "fetch", fetching)
        yield seen
