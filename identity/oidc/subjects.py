"""``sub`` values (OpenID Connect Core §8): pairwise per client sector by default, the
opaque patient ID for first-party clients, and the way back from (client, sub) to account.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, bindparam, select, text
from sqlalchemy.orm import Session

from carebridge.keyring import Keyring
from identity.oidc.models import OidcSubject

PAIRWISE_PURPOSE = "oidc-pairwise-sub"
# Written out (PostgreSQL and SQLite 3.35+ both speak it): the dialects' insert with
# on_conflict_do_nothing() is compiled again on every use, and its rowcount is not
# reported on PostgreSQL; RETURNING says whether the row went in.
_RECORD = text(
    "INSERT INTO oidc_subject (client_id, subject, account_id, created_at)"
    " VALUES (:client_id, :subject, :account_id, :created_at)"
    " ON CONFLICT DO NOTHING RETURNING account_id"
).bindparams(bindparam("created_at", type_=DateTime(timezone=True)))


def pairwise(keyring: Keyring, *, sector: str, account_id: str) -> str:
    """A subject two clients of different sectors cannot correlate (keyed by the pepper)."""
    return keyring.lookup_hash(PAIRWISE_PURPOSE, f"{sector}\n{account_id}")


def record(db: Session, *, client_id: str, subject: str, account_id: str) -> None:
    """Remember that ``subject`` given to ``client_id`` is ``account_id`` (idempotent).

    One statement when the pair is new: ``INSERT … ON CONFLICT DO NOTHING`` (no savepoint,
    and a concurrent request recording the same pair is no error). Raises ValueError if
    the client's ``sub`` already stands for another account or the account already has
    another ``sub`` with this client (a hash collision or a changed patient link).
    """
    row = {
        "client_id": client_id,
        "subject": subject,
        "account_id": account_id,
        "created_at": datetime.now(UTC),
    }
    if db.execute(_RECORD, row).first() is not None:
        return  # recorded now
    if account_for(db, client_id=client_id, subject=subject) != account_id:
        raise ValueError("subject already stands for another account")


def account_for(db: Session, *, client_id: str, subject: str) -> str | None:
    query = select(OidcSubject.account_id).where(
        OidcSubject.client_id == client_id, OidcSubject.subject == subject
    )
    return db.execute(query).scalar_one_or_none()
