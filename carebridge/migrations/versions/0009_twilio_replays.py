"""Twilio replays: the inbound MessageSids acted on (kept for good), and each attempt's
latest Twilio status, so a callback never moves it backwards.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sms_inbound_message",
        sa.Column("message_sid", sa.String(length=34), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_sid", name=op.f("pk_sms_inbound_message")),
    )
    with op.batch_alter_table("send_attempt") as batch:
        batch.add_column(sa.Column("provider_status", sa.String(length=16), nullable=True))
    # An attempt still in flight starts from what its notification last heard of it.
    op.execute(
        "UPDATE send_attempt SET provider_status = (SELECT notification.delivery_status "
        "FROM notification WHERE notification.attempt_id = send_attempt.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("send_attempt") as batch:
        batch.drop_column("provider_status")
    op.drop_table("sms_inbound_message")
