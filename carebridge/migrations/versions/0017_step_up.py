"""A session remembers when its second factor was last proved: ``stepped_up_at`` on
``auth_session`` (NULL: not in this session). Sensitive changes need it within
``step_up_minutes``; sessions from before this change count as not stepped up.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 20:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("auth_session") as batch:
        batch.add_column(sa.Column("stepped_up_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("auth_session") as batch:
        batch.drop_column("stepped_up_at")
