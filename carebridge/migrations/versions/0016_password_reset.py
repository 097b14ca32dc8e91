"""Password reset links: ``password_reset`` (a public selector, the keyed hash of the
token, its expiry and its use). Used rows record when an account's password was last
reset by e-mail.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 19:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "password_reset",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_password_reset_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_password_reset")),
    )
    op.create_index(
        op.f("ix_password_reset_account_id"), "password_reset", ["account_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_password_reset_account_id"), table_name="password_reset")
    op.drop_table("password_reset")
