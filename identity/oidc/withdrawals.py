"""Ending grants before they expire: refresh tokens revoked, and the access tokens they
gave withdrawn, at once, wherever they are presented (identity.oidc.holders).

Access tokens are JWTs stored nowhere, so they are withdrawn by what they carry, one row
of ``oidc_withdrawal`` each:

- ``jti``: one token (RFC 7009 revocation of an access token);
- ``grant``: every token of one grant, its family (the ``grant_id`` claim), whenever they
  were issued: a code or refresh token presented twice, a refresh token revoked (RFC 7009
  §2.1), an account disabled, a connected app revoked. The grant's code and refresh tokens
  are refused too, so nothing issued by a request racing the withdrawal outlives it;
- ``client``: every token of a disabled client, client-credentials tokens included
  (a replica may still answer from its cached registration for a few seconds: what it
  issues then is withdrawn as well).

No watermark by time is needed: an account's or a client's grants are its families, all
of which are on record (codes, refresh tokens) for as long as they can give a token.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import ColumnElement, DateTime, Table, bindparam, select, text, union, update
from sqlalchemy.orm import Session

from carebridge.http.bearer import LEEWAY_SECONDS, AccessToken
from carebridge.utc import utcnow
from identity.oidc.models import OidcAuthorizationCode, OidcRefreshToken

JTI = "jti"
GRANT = "grant"
CLIENT = "client"

# How long a grant's or a client's withdrawal is kept: longer than anything it withdraws
# can still be used. A code is exchanged within authorization_code_seconds (at most 10
# minutes), a replica may answer from a cached registration for client_cache_seconds (at
# most 1 minute), and an access token lives at most an hour (settings and clients.create
# cap all three). A grant's is kept longer while its family has refresh tokens stored
# (identity.oidc.purge).
KEPT = timedelta(seconds=600 + 60 + 3600 + LEEWAY_SECONDS)

_CODES = cast(Table, OidcAuthorizationCode.__table__)
_REFRESH = cast(Table, OidcRefreshToken.__table__)
# Written out: a withdrawal already on record (two revocations racing) is no error.
_WITHDRAW = text(
    "INSERT INTO oidc_withdrawal (kind, value, expires_at)"
    " VALUES (:kind, :value, :expires_at) ON CONFLICT DO NOTHING"
).bindparams(bindparam("expires_at", type_=DateTime(timezone=True)))


def _withdraw(db: Session, kind: str, values: Iterable[str], expires_at: datetime) -> None:
    rows = [{"kind": kind, "value": value, "expires_at": expires_at} for value in values]
    if rows:
        db.execute(_WITHDRAW, rows)


def _revoke_refresh_tokens(db: Session, *conditions: ColumnElement[bool]) -> int:
    result = db.execute(
        update(OidcRefreshToken)
        .where(*conditions, OidcRefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def withdraw_token(db: Session, access: AccessToken) -> None:
    """One access token (RFC 7009), until it would have expired."""
    expires_at = datetime.fromtimestamp(access.expires_at + LEEWAY_SECONDS, UTC)
    _withdraw(db, JTI, [access.jti], expires_at)


def end_family(db: Session, family_id: str) -> int:
    """One grant: its refresh tokens revoked, its code and access tokens withdrawn.
    Returns how many refresh tokens were still good."""
    _withdraw(db, GRANT, [family_id], utcnow() + KEPT)
    return _revoke_refresh_tokens(db, OidcRefreshToken.family_id == family_id)


def end_grants(db: Session, account_id: str, *, client_id: str | None = None) -> int:
    """Every grant of an account (it is disabled), or of an account to one client (the
    connected app was revoked): each family its codes and refresh tokens started, ended
    as :func:`end_family` ends one. Returns how many refresh tokens were still good."""
    now = utcnow()
    codes = select(_CODES.c.family_id).where(
        _CODES.c.account_id == account_id,
        # A code's family can give tokens no longer than this after the code expired.
        _CODES.c.expires_at > now - KEPT,
    )
    # A family whose tokens were all revoked was ended then.
    refresh = select(_REFRESH.c.family_id).where(
        _REFRESH.c.account_id == account_id, _REFRESH.c.revoked_at.is_(None)
    )
    owned = [OidcRefreshToken.account_id == account_id]
    if client_id is not None:
        codes = codes.where(_CODES.c.client_id == client_id)
        refresh = refresh.where(_REFRESH.c.client_id == client_id)
        owned.append(OidcRefreshToken.client_id == client_id)
    families = db.scalars(union(codes, refresh)).all()
    _withdraw(db, GRANT, families, now + KEPT)
    return _revoke_refresh_tokens(db, *owned)


def end_client(db: Session, client_id: str) -> int:
    """A disabled client: every token it holds withdrawn, its refresh tokens revoked.
    Returns how many refresh tokens were still good."""
    _withdraw(db, CLIENT, [client_id], utcnow() + KEPT)
    return _revoke_refresh_tokens(db, OidcRefreshToken.client_id == client_id)
