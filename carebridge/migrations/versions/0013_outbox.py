"""The channel-neutral outbox: one table for what any channel delivers (e-mail, one-time
codes by SMS, next webhooks). sms's notifications keep their own table, drained by the
same worker as the outbox's ledger for that channel: nothing existing moves.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 17:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=True),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index("ix_outbox_state_due_at", "outbox", ["state", "due_at"], unique=False)


def downgrade() -> None:
    # Rows still in it are lost with it: drain the outbox (no pending rows in
    # `carebridge notifications status`) before going back a release.
    op.drop_index("ix_outbox_state_due_at", table_name="outbox")
    op.drop_table("outbox")
