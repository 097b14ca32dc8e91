"""Changing the e-mail address: ``email_change`` holds each pending and completed change
of an account's address (the new and the old address sealed, with their lookup hashes;
the proof of the new one in ``email_verification``; the undo link's keyed hash, valid
7 days, and when it was used).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 20:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "email_change",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("verification_id", sa.String(length=40), nullable=False),
        sa.Column("new_address_hash", sa.String(length=64), nullable=False),
        sa.Column("new_address_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("old_address_hash", sa.String(length=64), nullable=True),
        sa.Column("old_address_encrypted", sa.LargeBinary(), nullable=True),
        sa.Column("old_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("undo_token_hash", sa.String(length=64), nullable=True),
        sa.Column("undo_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_email_change_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_change")),
        sa.UniqueConstraint("undo_token_hash", name=op.f("uq_email_change_undo_token_hash")),
    )
    op.create_index(op.f("ix_email_change_account_id"), "email_change", ["account_id"])
    op.create_index(op.f("ix_email_change_verification_id"), "email_change", ["verification_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_email_change_verification_id"), table_name="email_change")
    op.drop_index(op.f("ix_email_change_account_id"), table_name="email_change")
    op.drop_table("email_change")
