"""``sub`` values (OpenID Connect Core §8): pairwise per client sector by default, the
opaque patient ID for first-party clients, and the way back from (client, sub) to account.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from carebridge.keyring import Keyring
from identity.oidc.models import OidcSubject

PAIRWISE_PURPOSE = "oidc-pairwise-sub"


def pairwise(keyring: Keyring, *, sector: str, account_id: str) -> str:
    """A subject two clients of different sectors cannot correlate (keyed by the pepper)."""
    return keyring.lookup_hash(PAIRWISE_PURPOSE, f"{sector}\n{account_id}")


def record(db: Session, *, client_id: str, subject: str, account_id: str) -> None:
    """Remember that ``subject`` given to ``client_id`` is ``account_id`` (idempotent)."""
    existing = db.get(OidcSubject, (client_id, subject))
    if existing is not None:
        if existing.account_id != account_id:  # a hash collision or a changed patient link
            raise ValueError("subject already stands for another account")
        return
    try:
        with db.begin_nested():
            db.add(
                OidcSubject(
                    client_id=client_id,
                    subject=subject,
                    account_id=account_id,
                    created_at=datetime.now(UTC),
                )
            )
    except IntegrityError:
        # A concurrent request recorded the same pair first.
        if account_for(db, client_id=client_id, subject=subject) != account_id:
            raise


def account_for(db: Session, *, client_id: str, subject: str) -> str | None:
    query = select(OidcSubject.account_id).where(
        OidcSubject.client_id == client_id, OidcSubject.subject == subject
    )
    return db.execute(query).scalar_one_or_none()
