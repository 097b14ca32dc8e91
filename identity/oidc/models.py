"""The OpenID Connect provider's tables (registered on Base.metadata by carebridge.models).

Nothing secret is stored as issued: client secrets, authorization codes and refresh tokens
are kept as SHA-256 digests (they are 256-bit random values, so a fast hash is enough and
a stolen table is useless). Access tokens are self-contained JWTs, stored nowhere; what
withdraws them early (one token, a grant, a client) is kept until they would have expired
anyway.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from carebridge.db import Base
from carebridge.utc import UtcDateTime


class OidcSubject(Base):
    """Which account a ``sub`` given to a client stands for.

    Pairwise subjects are one-way (a keyed hash); resource servers in this service (the
    messaging API) map a token's (client, sub) back to the account through this table.
    Written whenever a subject is first given to a client.
    """

    __tablename__ = "oidc_subject"
    __table_args__ = (UniqueConstraint("client_id", "account_id"),)

    client_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    subject: Mapped[str] = mapped_column(String(100), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class OidcClient(Base):
    """A registered relying party (``carebridge clients create``).

    ``redirect_uris``, ``post_logout_redirect_uris`` and ``scopes`` are space-separated
    (none of them may contain a space); redirect URIs are compared exactly.
    """

    __tablename__ = "oidc_client"

    client_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    client_type: Mapped[str] = mapped_column(String(16))  # confidential | public
    token_endpoint_auth_method: Mapped[str] = mapped_column(String(40))
    secret_hash: Mapped[str | None] = mapped_column(String(64))
    jwks: Mapped[str | None] = mapped_column(Text)  # public keys for private_key_jwt
    redirect_uris: Mapped[str] = mapped_column(Text, default="")
    post_logout_redirect_uris: Mapped[str] = mapped_column(Text, default="")
    # OpenID Connect Back-Channel Logout: where logout tokens are POSTed (None: nowhere).
    backchannel_logout_uri: Mapped[str | None] = mapped_column(Text)
    scopes: Mapped[str] = mapped_column(Text, default="")
    first_party: Mapped[bool] = mapped_column(Boolean, default=False)
    sector: Mapped[str] = mapped_column(String(300))
    access_token_seconds: Mapped[int | None] = mapped_column(Integer)
    refresh_token_seconds: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    secret_rotated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class OidcAuthorizationCode(Base):
    """An issued authorization code, single use: ``used_at`` is set by a conditional
    UPDATE, and a second presentation revokes the refresh-token family it started."""

    __tablename__ = "oidc_authorization_code"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(40), unique=True)
    client_id: Mapped[str] = mapped_column(
        ForeignKey("oidc_client.client_id", ondelete="CASCADE"), index=True
    )
    # Indexed: disabling an account withdraws the grants its codes started.
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), index=True
    )
    redirect_uri: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)
    nonce: Mapped[str | None] = mapped_column(String(255))
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(10))
    auth_time: Mapped[datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class OidcRefreshToken(Base):
    """A refresh token; each use (``used_at``) issues its successor in the same family.

    Presenting a used token again means it leaked: the whole family is revoked.
    """

    __tablename__ = "oidc_refresh_token"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(40), index=True)
    client_id: Mapped[str] = mapped_column(
        ForeignKey("oidc_client.client_id", ondelete="CASCADE"), index=True
    )
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), index=True
    )
    scope: Mapped[str] = mapped_column(Text)
    auth_time: Mapped[datetime] = mapped_column(UtcDateTime)
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class OidcConsent(Base):
    """A patient's remembered grant to a client ("connected apps" on the account page)."""

    __tablename__ = "oidc_consent"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), primary_key=True
    )
    client_id: Mapped[str] = mapped_column(
        ForeignKey("oidc_client.client_id", ondelete="CASCADE"), primary_key=True
    )
    scope: Mapped[str] = mapped_column(Text)
    granted_at: Mapped[datetime] = mapped_column(UtcDateTime)


class OidcUsedAssertion(Base):
    """``jti`` of private_key_jwt client assertions already accepted (replay protection),
    kept until the assertion would have expired."""

    __tablename__ = "oidc_used_assertion"

    client_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class OidcWithdrawal(Base):
    """Access tokens withdrawn before they expire (identity.oidc.withdrawals), by what they
    carry: one token (``kind`` ``jti``, RFC 7009), every token of one grant (``grant``: its
    family, the tokens' ``grant_id`` claim; its code and refresh tokens are refused too),
    or every token of a client (``client``, disabled). Every resource API, userinfo and
    introspection look here on each request (identity.oidc.holders).

    Kept until nothing it withdraws can still be presented (``expires_at``), and a grant's
    as long as its family has refresh tokens stored (identity.oidc.purge).
    """

    __tablename__ = "oidc_withdrawal"

    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    value: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
