"""OpenID Connect Back-Channel Logout 1.0: telling apps a person's sessions ended.

When every session of an account ends at once (signed out everywhere, a password reset
or change, a recovery, an e-mail change, the account disabled or deleted: wherever
``withdrawals.end_grants`` ends all of an account's grants), each client that registered
a ``backchannel_logout_uri`` and holds a grant from the account gets a logout token,
queued in that transaction (:func:`queue`) and POSTed by the outbox's worker
(:class:`LogoutTokenHandler`) through the webhooks' SSRF-safe client and retry policy
(carebridge.events.outbound): no redirects, public addresses only.

The token (§2.4) is a JWT signed with the provider's active signing key (the ID tokens'
keys, in the JWKS), ``typ`` ``logout+jwt``, with ``iss``, ``aud`` (that client only),
``iat``, a short ``exp``, ``jti``, ``sub`` as that client knows the person (pairwise
where it gets pairwise subjects) and the ``events`` claim; never a ``nonce``. No ``sid``:
every session of the person ends, which a token without one means (§2.4). It is signed
at each attempt (fresh ``iat``/``exp``; the same ``jti``, so the client can deduplicate).
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from carebridge import outbox
from carebridge.events import address
from carebridge.events.outbound import PublicPoster
from carebridge.outbox import Message, Undeliverable
from carebridge.runtime import Runtime
from identity.oidc.models import OidcClient, OidcConsent, OidcSubject

CHANNEL = "logout_token"  # at most 16 characters (outbox.channel)
EVENT = "http://schemas.openid.net/event/backchannel-logout"
TYPE = "logout+jwt"
# Long enough for a clock a little off; the RP acts on it at once (§2.6).
LIFETIME_SECONDS = 120
USER_AGENT = "carebridge-backchannel-logout/1"


def queue(db: Session, account_id: str) -> int:
    """In ``db``'s transaction, queue a logout token for each client with a
    ``backchannel_logout_uri`` and a grant from the account; returns how many."""
    rows = db.execute(
        select(OidcClient.client_id, OidcSubject.subject)
        .join(OidcConsent, OidcConsent.client_id == OidcClient.client_id)
        .join(
            OidcSubject,
            (OidcSubject.client_id == OidcConsent.client_id)
            & (OidcSubject.account_id == OidcConsent.account_id),
        )
        .where(
            OidcConsent.account_id == account_id,
            OidcClient.backchannel_logout_uri.is_not(None),
            OidcClient.disabled_at.is_(None),
        )
        .order_by(OidcClient.client_id)
    ).all()
    for client_id, subject in rows:
        outbox.enqueue(
            db,
            channel=CHANNEL,
            kind="logout",
            payload={"client": client_id, "sub": subject, "jti": secrets.token_urlsafe(16)},
        )
    return len(rows)


def logout_token(runtime: Runtime, *, client_id: str, subject: str, jti: str) -> str:
    key = runtime.keyring.active_signing_key
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": runtime.settings.issuer,
        "aud": client_id,
        "iat": now,
        "exp": now + LIFETIME_SECONDS,
        "jti": jti,
        "sub": subject,
        "events": {EVENT: {}},
    }
    header = {"typ": TYPE, "alg": key.alg, "kid": key.kid}
    return jwt.encode(header, claims, key.key, algorithms=[key.alg])


class LogoutTokenHandler:
    """Registered by the composition root for the outbox's ``logout_token`` channel."""

    channel = CHANNEL

    def __init__(
        self,
        runtime: Runtime,
        *,
        resolver: address.Resolver = address.resolve,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.runtime = runtime
        self.poster = PublicPoster(
            runtime.settings, user_agent=USER_AGENT, resolver=resolver, transport=transport
        )

    def deliver(self, message: Message) -> None:
        client_id = message.payload.get("client", "")
        with self.runtime.sessions() as db:
            client = db.get(OidcClient, client_id)
            uri = client.backchannel_logout_uri if client is not None else None
            if client is None or client.disabled_at is not None or not uri:
                raise Undeliverable("client_gone")
        token = logout_token(
            self.runtime,
            client_id=client_id,
            subject=message.payload.get("sub", ""),
            jti=message.payload.get("jti", ""),
        )
        self.poster.post(
            uri,
            content=urlencode({"logout_token": token}).encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
