"""OpenID Connect provider: clients, codes, refresh tokens, consents, subjects given to clients.

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
    op.create_table(
        "oidc_client",
        sa.Column("client_id", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("client_type", sa.String(length=16), nullable=False),
        sa.Column("token_endpoint_auth_method", sa.String(length=40), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=True),
        sa.Column("jwks", sa.Text(), nullable=True),
        sa.Column("redirect_uris", sa.Text(), nullable=False),
        sa.Column("post_logout_redirect_uris", sa.Text(), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("first_party", sa.Boolean(), nullable=False),
        sa.Column("sector", sa.String(length=300), nullable=False),
        sa.Column("access_token_seconds", sa.Integer(), nullable=True),
        sa.Column("refresh_token_seconds", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("secret_rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_oidc_client")),
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
    op.create_table(
        "oidc_used_assertion",
        sa.Column("client_id", sa.String(length=100), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "jti", name=op.f("pk_oidc_used_assertion")),
    )
    op.create_index(
        op.f("ix_oidc_used_assertion_expires_at"),
        "oidc_used_assertion",
        ["expires_at"],
        unique=False,
    )
    op.create_table(
        "oidc_authorization_code",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("family_id", sa.String(length=40), nullable=False),
        sa.Column("client_id", sa.String(length=100), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("nonce", sa.String(length=255), nullable=True),
        sa.Column("code_challenge", sa.String(length=128), nullable=False),
        sa.Column("code_challenge_method", sa.String(length=10), nullable=False),
        sa.Column("auth_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_oidc_authorization_code_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["oidc_client.client_id"],
            name=op.f("fk_oidc_authorization_code_client_id_oidc_client"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_oidc_authorization_code")),
        sa.UniqueConstraint("family_id", name=op.f("uq_oidc_authorization_code_family_id")),
    )
    op.create_index(
        op.f("ix_oidc_authorization_code_client_id"),
        "oidc_authorization_code",
        ["client_id"],
        unique=False,
    )
    op.create_table(
        "oidc_consent",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("client_id", sa.String(length=100), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_oidc_consent_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["oidc_client.client_id"],
            name=op.f("fk_oidc_consent_client_id_oidc_client"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "client_id", name=op.f("pk_oidc_consent")),
    )
    op.create_table(
        "oidc_refresh_token",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("family_id", sa.String(length=40), nullable=False),
        sa.Column("client_id", sa.String(length=100), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("auth_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_oidc_refresh_token_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["oidc_client.client_id"],
            name=op.f("fk_oidc_refresh_token_client_id_oidc_client"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_oidc_refresh_token")),
    )
    op.create_index(
        op.f("ix_oidc_refresh_token_account_id"), "oidc_refresh_token", ["account_id"], unique=False
    )
    op.create_index(
        op.f("ix_oidc_refresh_token_client_id"), "oidc_refresh_token", ["client_id"], unique=False
    )
    op.create_index(
        op.f("ix_oidc_refresh_token_family_id"), "oidc_refresh_token", ["family_id"], unique=False
    )


def downgrade() -> None:
    for index, table in (
        ("ix_oidc_refresh_token_family_id", "oidc_refresh_token"),
        ("ix_oidc_refresh_token_client_id", "oidc_refresh_token"),
        ("ix_oidc_refresh_token_account_id", "oidc_refresh_token"),
        ("ix_oidc_authorization_code_client_id", "oidc_authorization_code"),
        ("ix_oidc_used_assertion_expires_at", "oidc_used_assertion"),
        ("ix_oidc_revoked_access_token_expires_at", "oidc_revoked_access_token"),
    ):
        op.drop_index(op.f(index), table_name=table)
    for table in (
        "oidc_refresh_token",
        "oidc_consent",
        "oidc_authorization_code",
        "oidc_used_assertion",
        "oidc_revoked_access_token",
        "oidc_client",
    ):
        op.drop_table(table)
    op.drop_table("oidc_subject")
