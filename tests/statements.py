"""The SQL statements a block of code runs, as the database driver receives them: hot
paths run some statements past SQLAlchemy (carebridge.db.DirectStatement), which its
events do not see."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(psycopg.Cursor, "execute", recording)
        yield seen
