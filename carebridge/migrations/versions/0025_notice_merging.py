"""No message goes unnoticed: a deferred notice is merged, not dropped; e-mail notices.

``notification`` gains ``recipient_account_id`` (who is told: empty, the patient
themself, as every row so far; an account, someone acting for the patient), ``covers``
(how many messages its notice counts) and ``merged_into`` (state "merged": the notice
that covered it).
``notification_preferences`` gains ``email_enabled`` (off: e-mail notices are opt-in).

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 22:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notification") as batch:
        batch.add_column(sa.Column("recipient_account_id", sa.String(40), nullable=True))
        batch.add_column(
            sa.Column("covers", sa.Integer(), nullable=False, server_default=sa.text("1"))
        )
        batch.add_column(sa.Column("merged_into", sa.String(40), nullable=True))
    with op.batch_alter_table("notification") as batch:
        batch.create_index("ix_notification_recipient_account_id", ["recipient_account_id"])
        # A care team asks how the notice of a thread went.
        batch.create_index("ix_notification_thread_id", ["thread_id"])
    with op.batch_alter_table("notification_preferences") as batch:
        batch.add_column(
            sa.Column("email_enabled", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("notification_preferences") as batch:
        batch.drop_column("email_enabled")
    with op.batch_alter_table("notification") as batch:
        batch.drop_index("ix_notification_thread_id")
        batch.drop_index("ix_notification_recipient_account_id")
        batch.drop_column("merged_into")
        batch.drop_column("covers")
        batch.drop_column("recipient_account_id")
