"""Migration 0029 (topics route to pools): existing topics stay team-wide, and survive the
rebuild of their table on SQLite with threads naming them; the downgrade takes the column
away. Both databases."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from sqlalchemy import text

from carebridge import migrate
from carebridge.db import make_engine


def test_0029_leaves_existing_topics_team_wide_and_downgrades(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    at = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)
    try:
        migrate.upgrade(engine, "0028")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO care_team (id, name, retention_days, created_at)"
                    " VALUES ('ct_1', 'Clinic', 30, :at)"
                ),
                {"at": at},
            )
            connection.execute(
                text(
                    "INSERT INTO care_team_topic (id, care_team_id, label, created_at)"
                    " VALUES ('top_1', 'ct_1', 'Billing', :at)"
                ),
                {"at": at},
            )
        migrate.upgrade(engine, "0029")
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT id, label, pool_id FROM care_team_topic")).all()
        assert [tuple(row) for row in rows] == [("top_1", "Billing", None)]
        command.downgrade(migrate.alembic_config(engine), "0028")
        columns = {c["name"] for c in sa.inspect(engine).get_columns("care_team_topic")}
        assert "pool_id" not in columns
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM care_team_topic")).scalar() == 1
        migrate.upgrade(engine)
    finally:
        engine.dispose()
