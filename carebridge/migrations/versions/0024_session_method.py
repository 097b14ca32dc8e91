"""A session remembers how its first factor was proved: ``first_factor`` on
``auth_session`` (``"password"`` or ``"upstream:<provider>"``). Recovering a lost second
factor needs a session that proved the password, not a social sign-in whose provider may
also be the mailbox. Sessions from before this change get NULL: unknown, so not a
password for recovery (their holders sign in again with the password).

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 22:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("auth_session") as batch:
        batch.add_column(sa.Column("first_factor", sa.String(80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("auth_session") as batch:
        batch.drop_column("first_factor")
