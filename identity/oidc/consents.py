"""Remembered grants ("connected apps"): what a patient allowed each client."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from carebridge import audit, events
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.utc import utcnow
from identity import events as identity_events
from identity.oidc import scopes as scope_rules
from identity.oidc import withdrawals
from identity.oidc.models import OidcClient, OidcConsent, OidcSubject


def remembered(
    db: Session, account_id: str, client_id: str, *, lock: bool = False
) -> frozenset[str]:
    """The scopes the person allowed the client. ``lock``: read for an authorization about
    to issue a code on the strength of it, the row locked until the code is stored (SELECT
    … FOR UPDATE; SQLite's IMMEDIATE transactions serialize anyway), so a :func:`revoke`
    racing it either commits first, and is seen here, or waits and then ends the new
    code's grant with the others."""
    row = db.get(OidcConsent, (account_id, client_id), with_for_update=lock or None)
    return frozenset(row.scope.split()) if row is not None else frozenset()


def remember(db: Session, *, account_id: str, client_id: str, scope: str) -> None:
    """Record a grant; asking again for more scopes adds to it. The row is locked, as by
    :func:`remembered`, until the code the grant gives is stored."""
    row = db.get(OidcConsent, (account_id, client_id), with_for_update=True)
    now = utcnow()
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
                granted_at=consent.granted_at,
            )
            for consent, name in rows
        ]


def revoke(runtime: Runtime, account_id: str, client_id: str, *, request_id: str | None) -> bool:
    """Forget the grant and end what it gave the client for this account: refresh tokens
    revoked, access tokens withdrawn (identity.oidc.withdrawals); audited. False (audited
    as denied) when there was no such grant and no refresh token of the client's to revoke.

    The grants are ended whether or not the remembered grant is still there: whatever the
    client holds for this account must not outlive a revocation the person asked for."""
    actor = f"account:{account_id}"
    with transaction(runtime.sessions) as db:
        result = db.execute(
            delete(OidcConsent).where(
                OidcConsent.account_id == account_id, OidcConsent.client_id == client_id[:100]
            )
        )
        forgotten = bool(result.rowcount)  # type: ignore[attr-defined]
        ended = withdrawals.end_grants(db, account_id, client_id=client_id[:100])
        # Nor what it was told and has not fetched yet: its events of this patient...
        subject = db.scalar(
            select(OidcSubject.subject).where(
                OidcSubject.account_id == account_id, OidcSubject.client_id == client_id[:100]
            )
        )
        if subject is not None and (forgotten or ended > 0):
            events.forget(db, client_id=client_id[:100], patient=subject)
        if forgotten:
            # ...but this one, after the forgetting: told once, to that app alone, that
            # the grant it held is gone.
            identity_events.grant_revoked(db, account_id=account_id, client_id=client_id[:100])
        found = forgotten or ended > 0
        audit.append(
            db,
            actor=actor,
            action="identity.oidc.consent.revoke",
            outcome=Outcome.ALLOWED if found else Outcome.DENIED,
            target=f"client:{client_id[:100]}",
            request_id=request_id,
        )
    return found
