"""Migration 0023 (events and webhook endpoints) goes up and down on both databases."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from sqlalchemy import text

from carebridge import migrate
from carebridge.db import make_engine


def test_0023_adds_events_and_webhook_endpoints_and_takes_them_away(
    empty_database_url: str,
) -> None:
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine, "0022")
        assert "event" not in sa.inspect(engine).get_table_names()
        migrate.upgrade(engine, "0023")
        at = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)
        with engine.begin() as connection:
            for event_id in ("evt_1", "evt_2"):
                connection.execute(
                    text(
                        "INSERT INTO event (id, client_id, type, data, created_at)"
                        " VALUES (:id, 'app', 'thread.closed', '{}', :at)"
                    ),
                    {"id": event_id, "at": at},
                )
            seqs = connection.execute(text("SELECT seq FROM event ORDER BY id")).scalars().all()
        assert seqs[0] < seqs[1]  # the feed's order, numbered by the database
        command.downgrade(migrate.alembic_config(engine), "0022")
        names = sa.inspect(engine).get_table_names()
        assert "event" not in names and "webhook_endpoint" not in names
        migrate.upgrade(engine)
        assert "webhook_endpoint" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
