"""Events for provider apps: the ``event`` log (the feed, and what webhooks deliver) and
``webhook_endpoint`` (where a client hears of its events, its secrets sealed under the
keyring's KEK).

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 22:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("client_id", sa.String(100), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_event")),
        sa.UniqueConstraint("id", name=op.f("uq_event_id")),
    )
    op.create_index("ix_event_client_seq", "event", ["client_id", "seq"])
    op.create_index("ix_event_created_at", "event", ["created_at"])
    op.create_table(
        "webhook_endpoint",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("client_id", sa.String(100), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("secret_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("previous_secret_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("previous_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoint")),
    )
    op.create_index("ix_webhook_endpoint_client_id", "webhook_endpoint", ["client_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_endpoint_client_id", table_name="webhook_endpoint")
    op.drop_table("webhook_endpoint")
    op.drop_index("ix_event_created_at", table_name="event")
    op.drop_index("ix_event_client_seq", table_name="event")
    op.drop_table("event")
