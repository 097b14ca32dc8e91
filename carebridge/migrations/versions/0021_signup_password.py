"""A sign-up's password waits on its e-mail verification: ``password_hash`` on
``email_verification``. The account gets the password only when the code or the link
comes back, so signing in with the password one chose at sign-up cannot tell a new
address from a taken one, and a stranger's unfinished sign-up cannot hold an address.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 21:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("email_verification") as batch:
        batch.add_column(sa.Column("password_hash", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("email_verification") as batch:
        batch.drop_column("password_hash")
