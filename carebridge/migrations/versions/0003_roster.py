"""Eligibility roster: members (hashed and encrypted, never plaintext), imports, patient links.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 16:17:44.374920
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "roster_import",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("imported", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("ineligible", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.CheckConstraint("mode IN ('full', 'partial')", name=op.f("ck_roster_import_mode")),
        sa.CheckConstraint(
            "outcome IN ('running', 'imported', 'refused')", name=op.f("ck_roster_import_outcome")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roster_import")),
    )
    op.create_index(op.f("ix_roster_import_source"), "roster_import", ["source"], unique=False)
    op.create_table(
        "roster_member",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("member_key", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=40), nullable=False),
        sa.Column("identity_hash", sa.String(length=64), nullable=False),
        sa.Column("dob_hash", sa.String(length=64), nullable=False),
        sa.Column("last_name_hash", sa.String(length=64), nullable=False),
        sa.Column("zip_hash", sa.String(length=64), nullable=False),
        sa.Column("details_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("eligible", sa.Boolean(), nullable=False),
        sa.Column("terminated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_import_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["last_import_id"],
            ["roster_import.id"],
            name=op.f("fk_roster_member_last_import_id_roster_import"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roster_member")),
        sa.UniqueConstraint("member_key", name=op.f("uq_roster_member_member_key")),
        sa.UniqueConstraint("patient_id", name=op.f("uq_roster_member_patient_id")),
    )
    op.create_index(
        op.f("ix_roster_member_identity_hash"), "roster_member", ["identity_hash"], unique=False
    )
    op.create_index(op.f("ix_roster_member_source"), "roster_member", ["source"], unique=False)
    op.create_table(
        "patient_link",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("patient_id", sa.String(length=40), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_patient_link_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["roster_member.patient_id"],
            name=op.f("fk_patient_link_patient_id_roster_member"),
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_patient_link")),
        sa.UniqueConstraint("patient_id", name=op.f("uq_patient_link_patient_id")),
    )


def downgrade() -> None:
    op.drop_table("patient_link")
    op.drop_index(op.f("ix_roster_member_source"), table_name="roster_member")
    op.drop_index(op.f("ix_roster_member_identity_hash"), table_name="roster_member")
    op.drop_table("roster_member")
    op.drop_index(op.f("ix_roster_import_source"), table_name="roster_import")
    op.drop_table("roster_import")
