"""A sign-in address remembers when it last replaced another: ``changed_at`` on
``login_identifier`` (NULL: the account's first address). Recovery by re-proving
identity is refused within 7 days of an address change (docs/threat-model.md).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 20:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("login_identifier") as batch:
        batch.add_column(sa.Column("changed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("login_identifier") as batch:
        batch.drop_column("changed_at")
