"""OpenID Connect provider: subjects given to clients (more tables follow in this revision).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 17:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oidc_subject",
        sa.Column("client_id", sa.String(length=100), nullable=False),
        sa.Column("subject", sa.String(length=100), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_oidc_subject_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("client_id", "subject", name=op.f("pk_oidc_subject")),
        sa.UniqueConstraint("client_id", "account_id", name=op.f("uq_oidc_subject_client_id")),
    )


def downgrade() -> None:
    op.drop_table("oidc_subject")
