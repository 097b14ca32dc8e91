"""Care relationships and patient-started threads.

``care_relationship`` records which care teams a patient belongs to (history kept: ending
sets ``ended_at``, a new relationship is a new row); ``care_team_topic`` the topics a team
offers patients who write first; ``care_team`` gains whether patients may start threads,
the automatic first reply, the escalation delay and the roster source of its patients;
``thread`` gains who started it, its topic and when it was escalated.

Every (patient, team) pair that already has a thread gets an active relationship
(source "migration"), so nothing changes for current users.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07 22:20:00.000000
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


# On SQLite, columns are added and dropped in place (recreate="never"): rebuilding
# care_team or thread would drop a table other rows reference, which their foreign keys
# refuse. Hence the server defaults kept, and no CHECK or foreign key on the new columns.


def upgrade() -> None:
    with op.batch_alter_table("care_team", recreate="never") as batch:
        batch.add_column(
            sa.Column("patients_may_start", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("auto_reply", sa.String(2000), nullable=True))
        batch.add_column(sa.Column("escalate_after_seconds", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("roster_source", sa.String(64), nullable=True))
    op.create_index(
        op.f("ix_care_team_roster_source"), "care_team", ["roster_source"], unique=False
    )
    op.create_table(
        "care_team_topic",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("care_team_id", sa.String(40), nullable=False),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["care_team_id"],
            ["care_team.id"],
            name=op.f("fk_care_team_topic_care_team_id_care_team"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_care_team_topic")),
    )
    op.create_index(
        op.f("ix_care_team_topic_care_team_id"), "care_team_topic", ["care_team_id"], unique=False
    )
    op.create_table(
        "care_relationship",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("patient_id", sa.String(40), nullable=False),
        sa.Column("care_team_id", sa.String(40), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(120), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_by", sa.String(120), nullable=True),
        sa.Column("end_reason", sa.String(200), nullable=True),
        sa.CheckConstraint(
            "source IN ('staff', 'app', 'operator', 'roster', 'thread', 'migration')",
            name=op.f("ck_care_relationship_source"),
        ),
        sa.ForeignKeyConstraint(
            ["care_team_id"],
            ["care_team.id"],
            name=op.f("fk_care_relationship_care_team_id_care_team"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_care_relationship")),
    )
    op.create_index(
        "uq_care_relationship_active",
        "care_relationship",
        ["patient_id", "care_team_id"],
        unique=True,
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.create_index(
        op.f("ix_care_relationship_care_team_id"),
        "care_relationship",
        ["care_team_id", "ended_at"],
        unique=False,
    )
    with op.batch_alter_table("thread", recreate="never") as batch:
        batch.add_column(
            sa.Column("started_by", sa.String(16), nullable=False, server_default="team")
        )
        batch.add_column(sa.Column("topic_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("escalated_at", sa.DateTime(timezone=True), nullable=True))
    _relationships_for_existing_threads()


def _relationships_for_existing_threads() -> None:
    bind = op.get_bind()
    pairs = bind.execute(
        sa.text("SELECT DISTINCT patient_id, care_team_id FROM thread ORDER BY 1, 2")
    ).all()
    table = sa.table(
        "care_relationship",
        sa.column("id", sa.String),
        sa.column("patient_id", sa.String),
        sa.column("care_team_id", sa.String),
        sa.column("source", sa.String),
        sa.column("created_by", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    now = datetime.now(UTC)
    rows = [
        {
            # The shape of carebridge.ids.new_id("rel"), frozen here as a migration must be.
            "id": "rel_" + secrets.token_urlsafe(16),
            "patient_id": patient_id,
            "care_team_id": team_id,
            "source": "migration",
            "created_by": "migration:0027",
            "created_at": now,
        }
        for patient_id, team_id in pairs
    ]
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    with op.batch_alter_table("thread", recreate="never") as batch:
        batch.drop_column("escalated_at")
        batch.drop_column("topic_id")
        batch.drop_column("started_by")
    op.drop_index(op.f("ix_care_relationship_care_team_id"), table_name="care_relationship")
    op.drop_index("uq_care_relationship_active", table_name="care_relationship")
    op.drop_table("care_relationship")
    op.drop_index(op.f("ix_care_team_topic_care_team_id"), table_name="care_team_topic")
    op.drop_table("care_team_topic")
    op.drop_index(op.f("ix_care_team_roster_source"), table_name="care_team")
    with op.batch_alter_table("care_team", recreate="never") as batch:
        batch.drop_column("roster_source")
        batch.drop_column("escalate_after_seconds")
        batch.drop_column("auto_reply")
        batch.drop_column("patients_may_start")
