"""Migration 0026 (staff roles and pools): existing staff get a role that sees every pool,
so nothing changes for them until a team admin decides; every team gets the default
roles; the downgrade takes it all away. Both databases."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from sqlalchemy import text

from carebridge import migrate
from carebridge.db import make_engine

_ADDED = {
    "care_team_role",
    "care_team_pool",
    "care_team_pool_role",
    "break_glass_grant",
    "staff_invite",
}


def test_0026_gives_existing_staff_a_role_that_sees_every_pool_and_downgrades(
    empty_database_url: str,
) -> None:
    engine = make_engine(empty_database_url)
    at = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)
    try:
        migrate.upgrade(engine, "0025")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO account (id, created_at, status) VALUES ('acc_1', :at, 'active')"
                ),
                {"at": at},
            )
            for team in ("ct_staffed", "ct_empty"):
                connection.execute(
                    text(
                        "INSERT INTO care_team (id, name, retention_days, created_at)"
                        " VALUES (:team, 'Clinic', 30, :at)"
                    ),
                    {"team": team, "at": at},
                )
            connection.execute(
                text(
                    "INSERT INTO care_team_staff (care_team_id, account_id, created_at)"
                    " VALUES ('ct_staffed', 'acc_1', :at)"
                ),
                {"at": at},
            )
        migrate.upgrade(engine, "0026")
        with engine.connect() as connection:
            role = connection.execute(
                text(
                    "SELECT r.name, r.sees_all_pools, r.is_team_admin FROM care_team_staff s"
                    " JOIN care_team_role r ON r.id = s.role_id WHERE s.account_id = 'acc_1'"
                )
            ).one()
            assert (role.name, bool(role.sees_all_pools), bool(role.is_team_admin)) == (
                "staff (all pools)",
                True,
                False,
            )
            names = {
                team: sorted(
                    connection.execute(
                        text("SELECT name FROM care_team_role WHERE care_team_id = :team"),
                        {"team": team},
                    ).scalars()
                )
                for team in ("ct_staffed", "ct_empty")
            }
        defaults = ["clinician", "front desk", "nurse", "team admin"]
        assert names["ct_empty"] == defaults
        assert names["ct_staffed"] == sorted([*defaults, "staff (all pools)"])
        command.downgrade(migrate.alembic_config(engine), "0025")
        assert not _ADDED & set(sa.inspect(engine).get_table_names())
        staff_columns = {c["name"] for c in sa.inspect(engine).get_columns("care_team_staff")}
        thread_columns = {c["name"] for c in sa.inspect(engine).get_columns("thread")}
        assert "role_id" not in staff_columns and "pool_id" not in thread_columns
        migrate.upgrade(engine)
        assert set(sa.inspect(engine).get_table_names()) >= _ADDED
    finally:
        engine.dispose()
