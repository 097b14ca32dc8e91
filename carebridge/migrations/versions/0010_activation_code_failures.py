"""Activation codes count their own failures: ``failures`` (wrong dates of birth while the
code was usable) and ``voided_at`` (set when they reach
``CAREBRIDGE_ACTIVATION_CODE_MAX_FAILURES``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("activation_code") as batch:
        batch.add_column(
            sa.Column("failures", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("activation_code") as batch:
        batch.drop_column("voided_at")
        batch.drop_column("failures")
