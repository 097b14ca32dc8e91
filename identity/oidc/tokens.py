"""Tokens: JWT access tokens (RFC 9068), opaque refresh tokens stored hashed, families,
and who the end user is as a given client sees them."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from joserfc import jwt
from sqlalchemy import Connection, Dialect, Select, Table, and_, bindparam, select, update
from sqlalchemy.orm import Session

from carebridge.db import DirectStatement, Gate, gated, insert_together
from carebridge.http import bearer
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity import accounts
from identity.models import Account, PatientLink
from identity.oidc import scopes as scope_rules
from identity.oidc import subjects
from identity.oidc.clients import Client
from identity.oidc.holders import GRANT_CLAIM
from identity.oidc.models import (
    OidcAuthorizationCode,
    OidcRefreshToken,
    OidcSubject,
    OidcWithdrawal,
)
from identity.oidc.withdrawals import GRANT


def digest(value: str) -> str:
    """Codes and refresh tokens are 256-bit random values: SHA-256 is enough at rest."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Authorizing:
    """The signed-in person approving an authorization request."""

    account_id: str
    auth_time: datetime


_REFRESH = cast(Table, OidcRefreshToken.__table__)
_ACCOUNT = cast(Table, Account.__table__)
_LINK = cast(Table, PatientLink.__table__)
_SUBJECT = cast(Table, OidcSubject.__table__)
_WITHDRAWAL = cast(Table, OidcWithdrawal.__table__)


@dataclass(frozen=True)
class AccountState:
    """What a grant needs to know of the account, read with the code or refresh token in
    the same statement: its status (None: gone), its patient (None: unverified), and the
    ``sub`` already recorded for the client (None: not yet)."""

    status: str | None
    patient_id: str | None
    recorded_subject: str | None

    @classmethod
    def of(cls, row: Any) -> AccountState:
        return cls(row.account_status, row.patient_id, row.recorded_subject)


_STATE_COLUMNS = (
    _ACCOUNT.c.status.label("account_status"),
    _LINK.c.patient_id.label("patient_id"),
    _SUBJECT.c.subject.label("recorded_subject"),
)


def with_account_state(table: Table) -> Select[Any]:
    """``SELECT table.*``, the :class:`AccountState` of its row's account as its row's
    client sees it (by the table's ``account_id`` and ``client_id``), and whether its
    grant was withdrawn (``grant_withdrawn_until``, by its ``family_id``; None if not):
    one round trip."""
    joined = (
        table.outerjoin(_ACCOUNT, _ACCOUNT.c.id == table.c.account_id)
        .outerjoin(_LINK, _LINK.c.account_id == table.c.account_id)
        .outerjoin(
            _SUBJECT,
            and_(
                _SUBJECT.c.client_id == table.c.client_id,
                _SUBJECT.c.account_id == table.c.account_id,
            ),
        )
        .outerjoin(
            _WITHDRAWAL,
            and_(_WITHDRAWAL.c.kind == GRANT, _WITHDRAWAL.c.value == table.c.family_id),
        )
    )
    withdrawn = _WITHDRAWAL.c.expires_at.label("grant_withdrawn_until")
    return select(table, *_STATE_COLUMNS, withdrawn).select_from(joined)


# Hot-path statements, built once: building a statement and its cache key on every
# request costs more than running it.
FIND_REFRESH_WITH_ACCOUNT = DirectStatement(
    with_account_state(_REFRESH).where(_REFRESH.c.token_hash == bindparam("token_hash"))
)
_USE_REFRESH = (
    update(_REFRESH)
    .where(
        _REFRESH.c.token_hash == bindparam("hash"),
        _REFRESH.c.used_at.is_(None),
        _REFRESH.c.revoked_at.is_(None),
    )
    .values(used_at=bindparam("now"))
)
_CODES = cast(Table, OidcAuthorizationCode.__table__)
_USE_CODE = (
    update(_CODES)
    .where(_CODES.c.code_hash == bindparam("hash"), _CODES.c.used_at.is_(None))
    .values(used_at=bindparam("now"))
)
# A code's or refresh token's single use: marked used if it was not, and the refresh
# token it is exchanged for stored only then (PostgreSQL: one statement, the claim gating
# the insert; carebridge.db.insert_gated).
_USE = {"authorization_code": _USE_CODE, "refresh_token": _USE_REFRESH}
_CLAIM = {
    "authorization_code": Gate(_USE_CODE.returning(_CODES.c.code_hash).cte("used"), ("code_hash",)),
    "refresh_token": Gate(
        _USE_REFRESH.returning(_REFRESH.c.token_hash).cte("used"), ("token_hash",)
    ),
}
_ACCOUNT_STATE = (
    select(*_STATE_COLUMNS)
    .select_from(
        _ACCOUNT.outerjoin(_LINK, _LINK.c.account_id == _ACCOUNT.c.id).outerjoin(
            _SUBJECT,
            and_(
                _SUBJECT.c.client_id == bindparam("client_id"),
                _SUBJECT.c.account_id == _ACCOUNT.c.id,
            ),
        )
    )
    .where(_ACCOUNT.c.id == bindparam("account_id"))
)


@dataclass(frozen=True)
class EndUser:
    """The person a grant is for, as one client sees them.

    ``patient`` is the patient identifier this client may see: for a first-party client the
    opaque patient ID (which is also its ``sub``), for any other client its pairwise
    ``sub`` (so two unrelated apps still cannot correlate); None while unverified.
    ``grant_id``: the grant (family) its tokens come from, carried by its access tokens so
    that ending the grant withdraws them (identity.oidc.withdrawals); None outside a grant.
    """

    account_id: str
    auth_time: int
    subject: str
    patient: str | None
    grant_id: str | None = None


def end_user(
    db: Callable[[], Session],
    runtime: Runtime,
    client: Client,
    account_id: str,
    auth_time: datetime,
    *,
    state: AccountState | None = None,
    grant_id: str | None = None,
) -> EndUser | None:
    """The end user for a token, or None if the account can no longer have one.

    ``state``: the account as read with the code or refresh token (the token endpoint's
    grants); without it, it is read here. The subject is recorded the first time it is
    given to the client (one INSERT), never looked up again once the state shows it.
    ``db`` gives the Session, asked for only then (identity.oidc.execution.InTransaction).
    ``grant_id``: the grant the user's tokens are for, if any (EndUser).
    """
    if state is None:
        found = (
            db()
            .execute(_ACCOUNT_STATE, {"account_id": account_id, "client_id": client.client_id})
            .first()
        )
        state = AccountState.of(found) if found is not None else None
    if state is None or state.status != accounts.ACTIVE:
        return None
    patient_id = state.patient_id
    if client.first_party:
        if patient_id is None:
            return None
        subject = patient_id
    else:
        subject = subjects.pairwise(runtime.keyring, sector=client.sector, account_id=account_id)
    if state.recorded_subject != subject:
        subjects.record(db(), client_id=client.client_id, subject=subject, account_id=account_id)
    return EndUser(
        account_id=account_id,
        auth_time=int(auth_time.timestamp()),
        subject=subject,
        patient=subject if patient_id is not None else None,
        grant_id=grant_id,
    )


def user_claims(
    db: Callable[[], Session], runtime: Runtime, user: EndUser, scope: str
) -> dict[str, Any]:
    """Claims for the ID token and userinfo: only what the granted scopes cover (``db``
    gives the Session, asked for only for the email)."""
    granted = set(scope.split())
    claims: dict[str, Any] = {"sub": user.subject}
    if "email" in granted:
        login = accounts.login_of(db(), runtime.keyring, user.account_id)
        if login and "@" in login:
            claims["email"] = login
            # Nothing proves yet that the person receives mail there (sign-up sends none).
            claims["email_verified"] = False
    if user.patient is not None and scope_rules.FHIR_USER in granted:
        claims["fhirUser"] = f"Patient/{user.patient}"
    return claims


def mint_access_token(
    runtime: Runtime, client: Client, *, scope: str, user: EndUser | None
) -> tuple[str, int]:
    """A signed access token (the contract in docs/oidc.md) and its lifetime in seconds."""
    settings = runtime.settings
    lifetime = client.access_token_seconds or settings.access_token_seconds
    key = runtime.keyring.active_signing_key
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "aud": settings.api_audience,
        "sub": user.subject if user else client.client_id,
        "client_id": client.client_id,
        "iat": now,
        "exp": now + lifetime,
        "jti": secrets.token_urlsafe(16),
        "scope": scope,
    }
    if user is not None:
        claims["auth_time"] = user.auth_time
        if user.grant_id is not None:
            claims[GRANT_CLAIM] = user.grant_id
    header = {"typ": "at+jwt", "alg": key.alg, "kid": key.kid}
    return jwt.encode(header, claims, key.key, algorithms=[key.alg]), lifetime


def refresh_row(
    runtime: Runtime,
    client: Client,
    *,
    token: str,
    family_id: str,
    account_id: str,
    scope: str,
    auth_time: datetime,
) -> dict[str, Any]:
    """A refresh token as stored: its hash, never the token."""
    now = utcnow()
    days = runtime.settings.refresh_token_days
    lifetime = timedelta(seconds=client.refresh_token_seconds or days * 86400)
    return {
        "token_hash": digest(token),
        "family_id": family_id,
        "client_id": client.client_id,
        "account_id": account_id,
        "scope": scope,
        "auth_time": auth_time,
        "issued_at": now,
        "expires_at": now + lifetime,
    }


def redeem(
    connection: Connection,
    kind: Literal["authorization_code", "refresh_token"],
    token_hash: str,
    successor: dict[str, Any] | None,
) -> bool:
    """Use a code or refresh token, storing the refresh token it is exchanged for
    (``successor``, from :func:`refresh_row`), atomically: of two racing uses exactly one
    gets True; the other, and any use of a revoked token, gets False and writes nothing."""
    if connection.dialect.name == "postgresql":
        statement, values = redemption(connection.dialect, kind, token_hash, successor)
        return bool(statement.rows(connection, values))
    if not connection.execute(_USE[kind], {"hash": token_hash, "now": utcnow()}).rowcount:
        return False
    insert_together(connection, [(_REFRESH, successor)] if successor is not None else [])
    return True


def redemption(
    dialect: Dialect,
    kind: Literal["authorization_code", "refresh_token"],
    token_hash: str,
    successor: dict[str, Any] | None,
) -> tuple[DirectStatement, dict[str, Any]]:
    """PostgreSQL: :func:`redeem` as one statement and its values (to run on any
    connection, autocommit included: the claim gates the insert within it). It answers
    with a row if the code or token was redeemed, none if not."""
    params = {"hash": token_hash, "now": utcnow()}
    rows = [(_REFRESH, successor)] if successor is not None else []
    return gated(dialect, _CLAIM[kind], params, rows)


def verify_access_token(runtime: Runtime, token: str) -> bearer.AccessToken | None:
    try:
        return bearer.verify(
            token,
            runtime.keyring.verification_keys(),
            issuer=runtime.settings.issuer,
            audience=runtime.settings.api_audience,
        )
    except bearer.InvalidTokenError:
        return None


def new_token() -> str:
    return secrets.token_urlsafe(32)
