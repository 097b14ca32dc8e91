"""Remembered grants ("connected apps"): what a patient allowed each client."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity.oidc import scopes as scope_rules
from identity.oidc import tokens, withdrawals
from identity.oidc.models import OidcClient, OidcConsent


def remembered(db: Session, account_id: str, client_id: str) -> frozenset[str]:
    row = db.get(OidcConsent, (account_id, client_id))
    return frozenset(row.scope.split()) if row is not None else frozenset()


def remember(db: Session, *, account_id: str, client_id: str, scope: str) -> None:
    """Record a grant; asking again for more scopes adds to it."""
    row = db.get(OidcConsent, (account_id, client_id))
    now = tokens.utcnow()
    if row is None:
        db.add(OidcConsent(account_id=account_id, client_id=client_id, scope=scope, granted_at=now))
        return
    row.scope = " ".join(scope_rules.split(f"{row.scope} {scope}"))
    row.granted_at = now


@dataclass(frozen=True)
class ConnectedApp:
    client_id: str
    name: str
    scopes: list[str]
    granted_at: datetime


def connected_apps(runtime: Runtime, account_id: str) -> list[ConnectedApp]:
    with runtime.sessions() as db:
        rows = db.execute(
            select(OidcConsent, OidcClient.name)
            .join(OidcClient, OidcClient.client_id == OidcConsent.client_id)
            .where(OidcConsent.account_id == account_id)
            .order_by(OidcConsent.granted_at.desc())
        ).all()
        return [
            ConnectedApp(
                client_id=consent.client_id,
                name=name,
                scopes=[scope_rules.describe(s) for s in consent.scope.split()],
                granted_at=tokens.aware(consent.granted_at),
            )
            for consent, name in rows
        ]


def revoke(runtime: Runtime, account_id: str, client_id: str, *, request_id: str | None) -> bool:
    """Forget the grant and end what it gave the client for this account: refresh tokens
    revoked, access tokens withdrawn (identity.oidc.withdrawals); audited. False (audited
    as denied) when there was no such grant."""
    actor = f"account:{account_id}"
    with transaction(runtime.sessions) as db:
        result = db.execute(
            delete(OidcConsent).where(
                OidcConsent.account_id == account_id, OidcConsent.client_id == client_id[:100]
            )
        )
        found = bool(result.rowcount)  # type: ignore[attr-defined]
        if found:
            withdrawals.end_grants(db, account_id, client_id=client_id)
        audit.append(
            db,
            actor=actor,
            action="identity.oidc.consent.revoke",
            outcome=Outcome.ALLOWED if found else Outcome.DENIED,
            target=f"client:{client_id[:100]}",
            request_id=request_id,
        )
    return found
