"""Secure messaging: care teams, their clients and staff, encrypted threads, messages,
attachments and read state.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 17:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "care_team",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_care_team")),
    )
    op.create_table(
        "care_team_client",
        sa.Column("client_id", sa.String(length=100), nullable=False),
        sa.Column("care_team_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["care_team_id"],
            ["care_team.id"],
            name=op.f("fk_care_team_client_care_team_id_care_team"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_care_team_client")),
    )
    op.create_index(
        op.f("ix_care_team_client_care_team_id"), "care_team_client", ["care_team_id"], unique=False
    )
    op.create_table(
        "care_team_staff",
        sa.Column("care_team_id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_care_team_staff_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["care_team_id"],
            ["care_team.id"],
            name=op.f("fk_care_team_staff_care_team_id_care_team"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("care_team_id", "account_id", name=op.f("pk_care_team_staff")),
    )
    op.create_index(
        op.f("ix_care_team_staff_account_id"), "care_team_staff", ["account_id"], unique=False
    )
    op.create_table(
        "thread",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("patient_id", sa.String(length=40), nullable=False),
        sa.Column("care_team_id", sa.String(length=40), nullable=False),
        sa.Column("subject_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("data_key_wrapped", sa.LargeBinary(), nullable=True),
        sa.Column("kek_id", sa.String(length=255), nullable=True),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("legal_hold", sa.Boolean(), nullable=False),
        sa.Column("legal_hold_reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_message_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("shredded_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('open', 'closed')", name=op.f("ck_thread_status")),
        sa.ForeignKeyConstraint(
            ["care_team_id"], ["care_team.id"], name=op.f("fk_thread_care_team_id_care_team")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_thread")),
    )
    op.create_index(
        op.f("ix_thread_care_team_id"), "thread", ["care_team_id", "last_message_at"], unique=False
    )
    op.create_index(op.f("ix_thread_kek_id"), "thread", ["kek_id"], unique=False)
    op.create_index(
        op.f("ix_thread_patient_id"), "thread", ["patient_id", "last_message_at"], unique=False
    )
    op.create_table(
        "message",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("thread_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("author_kind", sa.String(length=16), nullable=False),
        sa.Column("author_id", sa.String(length=100), nullable=False),
        sa.Column("body_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "author_kind IN ('patient', 'staff', 'app')", name=op.f("ck_message_author_kind")
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["thread.id"],
            name=op.f("fk_message_thread_id_thread"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message")),
        sa.UniqueConstraint("thread_id", "seq", name=op.f("uq_message_thread_id")),
    )
    op.create_table(
        "thread_read_state",
        sa.Column("thread_id", sa.String(length=40), nullable=False),
        sa.Column("participant", sa.String(length=120), nullable=False),
        sa.Column("last_read_seq", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["thread.id"],
            name=op.f("fk_thread_read_state_thread_id_thread"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("thread_id", "participant", name=op.f("pk_thread_read_state")),
    )
    op.create_table(
        "attachment",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("message_id", sa.String(length=40), nullable=False),
        sa.Column("thread_id", sa.String(length=40), nullable=False),
        sa.Column("filename_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("content_type", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("content_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["message.id"],
            name=op.f("fk_attachment_message_id_message"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["thread.id"],
            name=op.f("fk_attachment_thread_id_thread"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attachment")),
    )
    op.create_index(op.f("ix_attachment_message_id"), "attachment", ["message_id"], unique=False)
    op.create_index(op.f("ix_attachment_thread_id"), "attachment", ["thread_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_attachment_thread_id"), table_name="attachment")
    op.drop_index(op.f("ix_attachment_message_id"), table_name="attachment")
    op.drop_table("attachment")
    op.drop_table("thread_read_state")
    op.drop_table("message")
    op.drop_index(op.f("ix_thread_patient_id"), table_name="thread")
    op.drop_index(op.f("ix_thread_kek_id"), table_name="thread")
    op.drop_index(op.f("ix_thread_care_team_id"), table_name="thread")
    op.drop_table("thread")
    op.drop_index(op.f("ix_care_team_staff_account_id"), table_name="care_team_staff")
    op.drop_table("care_team_staff")
    op.drop_index(op.f("ix_care_team_client_care_team_id"), table_name="care_team_client")
    op.drop_table("care_team_client")
    op.drop_table("care_team")
