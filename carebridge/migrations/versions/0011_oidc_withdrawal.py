"""Withdrawn access tokens by what they carry (one token, a grant, a client), replacing
the list of revoked token IDs; codes indexed by account (disabling one ends its grants).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08 09:00:00.000000
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oidc_withdrawal",
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "value", name=op.f("pk_oidc_withdrawal")),
    )
    op.create_index(
        op.f("ix_oidc_withdrawal_expires_at"), "oidc_withdrawal", ["expires_at"], unique=False
    )
    # Revoked access tokens stay revoked for as long as they verify: their expiry, which
    # is what the old table held, plus the verifier's leeway (carebridge.http.bearer, 30 s
    # then), as identity.oidc.withdrawals records it now; else the purge could drop a
    # withdrawal while its token still verifies. Added in Python: the two databases spell
    # date arithmetic differently.
    bind = op.get_bind()
    revoked = sa.table(
        "oidc_revoked_access_token",
        sa.column("jti", sa.String()),
        sa.column("expires_at", sa.DateTime(timezone=True)),
    )
    withdrawal = sa.table(
        "oidc_withdrawal",
        sa.column("kind", sa.String()),
        sa.column("value", sa.String()),
        sa.column("expires_at", sa.DateTime(timezone=True)),
    )
    leeway = timedelta(seconds=30)
    rows = [
        {"kind": "jti", "value": jti, "expires_at": expires_at + leeway}
        for jti, expires_at in bind.execute(sa.select(revoked.c.jti, revoked.c.expires_at))
    ]
    if rows:
        bind.execute(sa.insert(withdrawal), rows)
    op.drop_index(
        op.f("ix_oidc_revoked_access_token_expires_at"), table_name="oidc_revoked_access_token"
    )
    op.drop_table("oidc_revoked_access_token")
    op.create_index(
        op.f("ix_oidc_authorization_code_account_id"),
        "oidc_authorization_code",
        ["account_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_oidc_authorization_code_account_id"), table_name="oidc_authorization_code"
    )
    op.create_table(
        "oidc_revoked_access_token",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_oidc_revoked_access_token")),
    )
    op.create_index(
        op.f("ix_oidc_revoked_access_token_expires_at"),
        "oidc_revoked_access_token",
        ["expires_at"],
        unique=False,
    )
    # Single tokens only: grant and client withdrawals have no place there (their refresh
    # tokens stay revoked; their access tokens work again until they expire).
    op.execute(
        "INSERT INTO oidc_revoked_access_token (jti, expires_at)"
        " SELECT value, expires_at FROM oidc_withdrawal WHERE kind = 'jti' AND length(value) <= 64"
    )
    op.drop_index(op.f("ix_oidc_withdrawal_expires_at"), table_name="oidc_withdrawal")
    op.drop_table("oidc_withdrawal")
