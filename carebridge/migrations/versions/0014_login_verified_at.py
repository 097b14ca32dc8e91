"""A sign-in address remembers when its owner proved they read it: ``verified_at`` on
``login_identifier`` (NULL: never; accounts from before e-mail verification are asked at
their next sign-in). Only a verified address receives recovery e-mails.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 19:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("login_identifier") as batch:
        batch.add_column(sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("login_identifier") as batch:
        batch.drop_column("verified_at")
