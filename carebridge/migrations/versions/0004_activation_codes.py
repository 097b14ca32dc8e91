"""Activation codes (one-time, hashed) and staff actions with their stated reasons.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 16:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "activation_code",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("patient_id", sa.String(length=40), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["roster_member.patient_id"],
            name=op.f("fk_activation_code_patient_id_roster_member"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_activation_code")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_activation_code_code_hash")),
    )
    op.create_index(
        op.f("ix_activation_code_patient_id"), "activation_code", ["patient_id"], unique=False
    )
    op.create_table(
        "staff_action",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=40), nullable=True),
        sa.Column("account_id", sa.String(length=40), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_action")),
    )
    op.create_index(
        op.f("ix_staff_action_patient_id"), "staff_action", ["patient_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_staff_action_patient_id"), table_name="staff_action")
    op.drop_table("staff_action")
    op.drop_index(op.f("ix_activation_code_patient_id"), table_name="activation_code")
    op.drop_table("activation_code")
