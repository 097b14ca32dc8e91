"""Whom a presented access token stands for, if it still does: the one lookup every
resource API (messaging, admin), userinfo and introspection make per request.

The token itself is checked offline (carebridge.http.bearer: signature, issuer, audience,
lifetime, scope). What needs the database is asked here, in one indexed statement: whether
it was withdrawn (identity.oidc.withdrawals: its ``jti``, its grant, its client), and for a
token a person authorized, which account its (client, sub) is and whether that account is
active. The statement reads the database on every request, with no cache in between: a
withdrawal committed before a request began is seen by it, on every replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, exists, or_, select
from sqlalchemy.orm import Session

from carebridge.db import DirectStatement
from carebridge.http.bearer import AccessToken
from identity.accounts import ACTIVE
from identity.models import Account, PatientLink
from identity.oidc.models import OidcSubject, OidcWithdrawal
from identity.oidc.withdrawals import CLIENT, GRANT, JTI

GRANT_CLAIM = "grant_id"


class WithdrawnError(Exception):
    """The token was withdrawn before it expired: refuse it as an invalid token (401)."""


@dataclass(frozen=True)
class Person:
    """The active account a user-bound token acts for, and its verified patient ID."""

    account_id: str
    patient_id: str | None


_WITHDRAWAL = cast(Table, OidcWithdrawal.__table__)
_SUBJECTS = cast(Table, OidcSubject.__table__)
_ACCOUNTS = cast(Table, Account.__table__)
_LINKS = cast(Table, PatientLink.__table__)
# Three primary-key probes: the token, its grant, its client.
_WITHDRAWN = (
    exists()
    .where(
        or_(
            and_(_WITHDRAWAL.c.kind == JTI, _WITHDRAWAL.c.value == bindparam("jti")),
            and_(_WITHDRAWAL.c.kind == GRANT, _WITHDRAWAL.c.value == bindparam("grant_id")),
            and_(_WITHDRAWAL.c.kind == CLIENT, _WITHDRAWAL.c.value == bindparam("client_id")),
        )
    )
    .label("withdrawn")
)
# Built once, run direct (carebridge.db.DirectStatement): every API request asks.
# (client, sub) -> the account, its status, its verified patient ID; and the withdrawal.
_PERSON = DirectStatement(
    select(_ACCOUNTS.c.id, _ACCOUNTS.c.status, _LINKS.c.patient_id, _WITHDRAWN)
    .select_from(
        _SUBJECTS.join(_ACCOUNTS, _ACCOUNTS.c.id == _SUBJECTS.c.account_id).outerjoin(
            _LINKS, _LINKS.c.account_id == _ACCOUNTS.c.id
        )
    )
    .where(
        _SUBJECTS.c.client_id == bindparam("client_id"),
        _SUBJECTS.c.subject == bindparam("subject"),
    )
)
_CLIENT = DirectStatement(select(_WITHDRAWN))


def grant_of(token: AccessToken) -> str | None:
    """The grant (family) a token a person authorized came from; None for a client's own
    token, or one issued before tokens carried it."""
    value = token.claims.get(GRANT_CLAIM)
    return value if isinstance(value, str) else None


def _params(token: AccessToken) -> dict[str, Any]:
    # "" is no grant: never a family ID.
    return {"jti": token.jti, "grant_id": grant_of(token) or "", "client_id": token.client_id}


def person(db: Session, token: AccessToken) -> Person | None:
    """The active account a user-bound token stands for; None if (client, sub) is no one
    or the account is not active. Raises WithdrawnError if the token was withdrawn."""
    found = _PERSON.first(db, {**_params(token), "subject": token.subject})
    if found is None:
        return None
    if found.withdrawn:
        raise WithdrawnError
    if found.status != ACTIVE:
        return None
    return Person(found.id, found.patient_id)


def check_client_token(db: Session, token: AccessToken) -> None:
    """Raises WithdrawnError if a client's own (client credentials) token, or its
    client, was withdrawn."""
    if _CLIENT.first(db, _params(token)).withdrawn:
        raise WithdrawnError


def in_standing(db: Session, token: AccessToken) -> bool:
    """Whether the token still acts: not withdrawn, and for a person, their account active."""
    try:
        if token.is_client_only:
            check_client_token(db, token)
            return True
        return person(db, token) is not None
    except WithdrawnError:
        return False
