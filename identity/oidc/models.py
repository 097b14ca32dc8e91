"""The OpenID Connect provider's tables (registered on Base.metadata by carebridge.models)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from carebridge.db import Base


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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
