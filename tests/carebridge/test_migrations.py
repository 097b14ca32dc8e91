"""Alembic migrations: they build the schema the models describe, on both backends."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from carebridge import audit, migrate
from carebridge.audit import Outcome
from carebridge.db import make_engine, make_sessionmaker, transaction
from carebridge.models import metadata
from carebridge.outbox import OutboxMessage
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity.oidc import purge
from identity.oidc.models import OidcWithdrawal
from tests.sms.helpers import same_clock


def test_upgrade_from_empty_reaches_head(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.upgrade(engine)  # a second run has nothing to do
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_migrations_match_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_an_audit_chain_written_before_0008_still_verifies_and_grows(
    empty_database_url: str,
) -> None:
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine, "0007")
        prev = audit.GENESIS
        with engine.begin() as connection:
            for seq in (1, 2, 3):  # chained as before 0008: by seq, under the lock
                row = {
                    "seq": seq,
                    "at": datetime(2026, 11, 30, 12, 0, seq, tzinfo=UTC),
                    "actor": "system",
                    "action": "test.old",
                    "target": None,
                    "outcome": "allowed",
                    "request_id": None,
                }
                digest = audit.record_hash(prev, **row)  # type: ignore[arg-type]
                connection.execute(
                    text(
                        "INSERT INTO audit_log (seq, at, actor, action, target, outcome, "
                        "request_id, prev_hash, hash) VALUES (:seq, :at, :actor, :action, "
                        ":target, :outcome, :request_id, :prev, :digest)"
                    ),
                    {**row, "prev": prev, "digest": digest},
                )
                prev = digest
        migrate.upgrade(engine)
        sessions = make_sessionmaker(engine)
        with transaction(sessions) as session:
            audit.append(session, actor="system", action="test.new", outcome=Outcome.ALLOWED)
        audit.chain_all(sessions)
        with sessions() as session:
            result = audit.verify(session)
        assert result.intact and result.records == 4
    finally:
        engine.dispose()


def test_0012_gives_stored_time_zones_their_canonical_names(
    empty_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Stored before aliases were refused; the default is the deployment's, not the code's.
    stored = {
        "US/Eastern": "America/New_York",
        "Asia/Calcutta": "Asia/Kolkata",
        "Etc/UTC": "UTC",
        "GMT": "UTC",
        "America/Chicago": "America/Chicago",
        "localtime": "Europe/Berlin",
        "Factory": "Europe/Berlin",
        "Etc/GMT+5": "Europe/Berlin",
    }
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine, "0010")
        with engine.begin() as connection:
            for n, zone in enumerate(stored):
                connection.execute(
                    text(
                        "INSERT INTO notification_preferences (patient_id, sms_enabled, "
                        "voice_enabled, voicemail_enabled, time_zone, quiet_start, quiet_end, "
                        "daily_cap, weekly_cap, insecure_consent, updated_at) VALUES (:id, "
                        "false, false, false, :zone, '21:00', '08:00', 1, 3, false, :at)"
                    ),
                    {"id": f"pt_{n}", "zone": zone, "at": datetime(2026, 12, 1, tzinfo=UTC)},
                )
        settings = Settings(data_dir=tmp_path, notify_time_zone="Europe/Berlin")
        with caplog.at_level(logging.WARNING, logger="carebridge.migrate"):
            migrate.upgrade(engine, settings=settings)
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT patient_id, time_zone FROM notification_preferences")
            ).all()
        now = {str(patient): str(zone) for patient, zone in rows}
        assert now == {f"pt_{n}": zone for n, zone in enumerate(stored.values())}
        for before, after in stored.items():
            if after != "Europe/Berlin":
                assert same_clock(before, after), before
        # Those whose quiet hours may move are counted where an operator sees them.
        moved = sorted(r.getMessage() for r in caplog.records if r.name == "carebridge.migrate")
        assert moved == [
            f"time zone '{name}' names no place: 1 patients now have the default, Europe/Berlin"
            for name in sorted(["Etc/GMT+5", "Factory", "localtime"])
        ]
    finally:
        engine.dispose()


def test_a_token_revoked_before_0011_stays_withdrawn_while_it_still_verifies(
    empty_database_url: str, tmp_path: Path
) -> None:
    # Before 0011 a revoked access token was kept until its expiry; it verifies 30 s
    # longer (carebridge.http.bearer.LEEWAY_SECONDS), so its withdrawal must outlive that.
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine, "0010")
        revoked = sa.table(
            "oidc_revoked_access_token",
            sa.column("jti", sa.String()),
            sa.column("expires_at", sa.DateTime(timezone=True)),
        )
        expired = datetime.now(UTC) - timedelta(seconds=10)  # within the leeway
        with engine.begin() as connection:
            connection.execute(sa.insert(revoked), {"jti": "jti-1", "expires_at": expired})
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    runtime = Runtime.build(Settings(data_dir=tmp_path / "data", database_url=empty_database_url))
    try:
        purge.purge_expired(runtime)  # the worker's hourly clean-up
        with runtime.sessions() as db:
            assert db.get(OidcWithdrawal, ("jti", "jti-1")) is not None
    finally:
        runtime.close()


def test_0013_adds_the_outbox_and_takes_it_away_again(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine, "0012")
        assert "outbox" not in sa.inspect(engine).get_table_names()
        migrate.upgrade(engine, "0013")
        at = datetime(2026, 12, 7, 17, 0, tzinfo=UTC)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO outbox (id, channel, kind, payload, state, due_at, attempts, "
                    "created_at, updated_at) VALUES ('obx_1', 'email', 'transactional', "
                    "'{}', 'dead', :at, 8, :at, :at)"
                ),
                {"at": at},
            )
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            row = session.get(OutboxMessage, "obx_1")
            assert row is not None and (row.state, row.payload) == ("dead", {})
        command.downgrade(migrate.alembic_config(engine), "0012")
        assert "outbox" not in sa.inspect(engine).get_table_names()
        assert migrate.current_revision(engine) == "0012"
        migrate.upgrade(engine)
        assert "outbox" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_0014_leaves_existing_addresses_unverified_and_downgrades(
    empty_database_url: str,
) -> None:
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine, "0013")
        at = datetime(2026, 12, 7, 19, 0, tzinfo=UTC)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO account (id, created_at, status) VALUES ('acct_1', :at, 'active')"
                ),
                {"at": at},
            )
            connection.execute(
                text(
                    "INSERT INTO login_identifier (account_id, lookup_hash, encrypted) "
                    "VALUES ('acct_1', 'h1', :blob)"
                ),
                {"blob": b"sealed"},
            )
        migrate.upgrade(engine, "0014")
        with engine.connect() as connection:
            verified = connection.execute(
                text("SELECT verified_at FROM login_identifier WHERE account_id = 'acct_1'")
            ).one()
            assert verified == (None,)
        command.downgrade(migrate.alembic_config(engine), "0013")
        columns = {c["name"] for c in sa.inspect(engine).get_columns("login_identifier")}
        assert "verified_at" not in columns
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def test_0018_gives_addresses_no_change_time_and_downgrades(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine, "0018")
        columns = {c["name"] for c in sa.inspect(engine).get_columns("login_identifier")}
        assert "changed_at" in columns
        command.downgrade(migrate.alembic_config(engine), "0017")
        columns = {c["name"] for c in sa.inspect(engine).get_columns("login_identifier")}
        assert "changed_at" not in columns
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def test_the_account_lifecycle_migrations_downgrade_and_upgrade_again(
    empty_database_url: str,
) -> None:
    # 0014-0021 (e-mail verification, reset, step-up, recovery, e-mail change): each one's
    # downgrade takes away what its upgrade added, on both databases, and head comes back.
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine)
        added = {"email_verification", "password_reset", "recovery_request", "email_change"}
        assert added <= set(sa.inspect(engine).get_table_names())
        command.downgrade(migrate.alembic_config(engine), "0013")
        assert migrate.current_revision(engine) == "0013"
        assert not added & set(sa.inspect(engine).get_table_names())
        session_columns = {c["name"] for c in sa.inspect(engine).get_columns("auth_session")}
        assert "stepped_up_at" not in session_columns
        migrate.upgrade(engine)
        assert added <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_0022_keeps_read_state_per_side_and_downgrades(empty_database_url: str) -> None:
    # Staff members' positions become the team's (the furthest any of them read), an app's
    # goes (it reads for nobody), the patient's row is named for the side; downgrade gives
    # every staff member the team's position again.
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine, "0021")
        at = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)
        statements = [
            "INSERT INTO care_team (id, name, retention_days, created_at)"
            " VALUES ('ct_1', 'Northside', 30, :at)",
            "INSERT INTO account (id, created_at, status) VALUES ('acc_1', :at, 'active')",
            "INSERT INTO account (id, created_at, status) VALUES ('acc_2', :at, 'active')",
            "INSERT INTO care_team_staff (care_team_id, account_id, created_at)"
            " VALUES ('ct_1', 'acc_1', :at)",
            "INSERT INTO care_team_staff (care_team_id, account_id, created_at)"
            " VALUES ('ct_1', 'acc_2', :at)",
            "INSERT INTO thread (id, patient_id, care_team_id, subject_encrypted, status,"
            " last_seq, legal_hold, created_at, last_message_at)"
            " VALUES ('th_1', 'pat_1', 'ct_1', :blob, 'open', 4, false, :at, :at)",
        ]
        positions = {"patient:pat_1": 1, "account:acc_1": 2, "account:acc_2": 3, "app:app_1": 4}
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement), {"at": at, "blob": b"sealed"})
            for participant, seq in positions.items():
                connection.execute(
                    text(
                        "INSERT INTO thread_read_state (thread_id, participant, last_read_seq,"
                        " updated_at) VALUES ('th_1', :participant, :seq, :at)"
                    ),
                    {"participant": participant, "seq": seq, "at": at},
                )

        def read_state() -> set[tuple[str, int]]:
            with engine.connect() as connection:
                rows = connection.execute(
                    text("SELECT participant, last_read_seq FROM thread_read_state")
                )
                return {(row[0], row[1]) for row in rows}

        migrate.upgrade(engine, "0022")
        assert read_state() == {("patient", 1), ("team", 3)}
        indexes = {i["name"] for i in sa.inspect(engine).get_indexes("message")}
        assert "ix_message_patient_seq" in indexes
        command.downgrade(migrate.alembic_config(engine), "0021")
        assert read_state() == {("patient:pat_1", 1), ("account:acc_1", 3), ("account:acc_2", 3)}
        indexes = {i["name"] for i in sa.inspect(engine).get_indexes("message")}
        assert "ix_message_patient_seq" not in indexes
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def test_0024_leaves_existing_sessions_without_a_first_factor_and_downgrades(
    empty_database_url: str,
) -> None:
    # Sessions from before 0024 record no first factor: unknown, so not a password for
    # recovering a lost second factor (their holders sign in again with it).
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine, "0023")
        at = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO account (id, created_at, status) VALUES ('acct_1', :at, 'active')"
                ),
                {"at": at},
            )
            connection.execute(
                text(
                    "INSERT INTO auth_session (token_hash, handle, account_id, level, "
                    "created_at, authenticated_at, last_seen_at, expires_at, user_agent) "
                    "VALUES ('h1', 'ses_1', 'acct_1', 1, :at, :at, :at, :at, '')"
                ),
                {"at": at},
            )
        migrate.upgrade(engine, "0024")
        with engine.connect() as connection:
            factor = connection.execute(
                text("SELECT first_factor FROM auth_session WHERE handle = 'ses_1'")
            ).one()
            assert factor == (None,)
        command.downgrade(migrate.alembic_config(engine), "0023")
        columns = {c["name"] for c in sa.inspect(engine).get_columns("auth_session")}
        assert "first_factor" not in columns
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def test_0027_gives_every_pair_with_a_thread_a_care_relationship_and_downgrades(
    empty_database_url: str,
) -> None:
    engine = make_engine(empty_database_url)
    now = datetime.now(UTC)
    try:
        migrate.upgrade(engine, "0026")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO care_team (id, name, retention_days, created_at)"
                    " VALUES ('ct_1', 'Clinic', 30, :now)"
                ),
                {"now": now},
            )
            for thread_id, patient_id in [("th_1", "p_1"), ("th_2", "p_1"), ("th_3", "p_2")]:
                connection.execute(
                    text(
                        "INSERT INTO thread (id, patient_id, care_team_id, subject_encrypted,"
                        " status, last_seq, legal_hold, created_at, last_message_at)"
                        " VALUES (:id, :patient, 'ct_1', :subject, 'open', 1, :false, :now, :now)"
                    ),
                    {
                        "id": thread_id,
                        "patient": patient_id,
                        "subject": b"x",
                        "false": False,
                        "now": now,
                    },
                )
            # A message referencing a thread: SQLite must not rebuild the thread table.
            connection.execute(
                text(
                    "INSERT INTO message (id, thread_id, seq, author_kind, author_id,"
                    " body_encrypted, created_at)"
                    " VALUES ('msg_1', 'th_1', 1, 'staff', 'acc_1', :body, :now)"
                ),
                {"body": b"x", "now": now},
            )
        migrate.upgrade(engine)
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT patient_id, care_team_id, source, ended_at FROM care_relationship"
                    " ORDER BY patient_id"
                )
            ).all()
            started_by = connection.execute(text("SELECT DISTINCT started_by FROM thread")).all()
        assert [tuple(row) for row in rows] == [
            ("p_1", "ct_1", "migration", None),
            ("p_2", "ct_1", "migration", None),
        ]
        assert [tuple(row) for row in started_by] == [("team",)]
        command.downgrade(migrate.alembic_config(engine), "0026")
        assert "care_relationship" not in sa.inspect(engine).get_table_names()
        columns = {c["name"] for c in sa.inspect(engine).get_columns("thread")}
        assert not {"started_by", "topic_id", "escalated_at"} & columns
        migrate.upgrade(engine)
    finally:
        engine.dispose()
