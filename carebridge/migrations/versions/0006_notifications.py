"""Notifications: the outbox (contact points and preferences follow in this revision).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 17:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("patient_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("thread_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification")),
    )
    op.create_index(
        op.f("ix_notification_patient_id"), "notification", ["patient_id"], unique=False
    )
    op.create_index(op.f("ix_notification_state"), "notification", ["state"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_notification_state"), table_name="notification")
    op.drop_index(op.f("ix_notification_patient_id"), table_name="notification")
    op.drop_table("notification")
