"""OpenID Connect Back-Channel Logout: a client may register where it hears of a logout.

``oidc_client`` gains ``backchannel_logout_uri`` (empty: the client gets no logout
tokens, as every client so far).

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-07 23:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("oidc_client") as batch:
        batch.add_column(sa.Column("backchannel_logout_uri", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("oidc_client") as batch:
        batch.drop_column("backchannel_logout_uri")
