"""A presented token, as revocation (RFC 7009) and introspection (RFC 7662) find it: a
JWT access token, checked offline and then for withdrawal, or a refresh token's row."""

from __future__ import annotations

import time
from dataclasses import dataclass

from carebridge.http import bearer
from identity.oidc import holders, tokens
from identity.oidc.clients import Client
from identity.oidc.grants import Provider, RefreshRecord, refresh_lookup


@dataclass(frozen=True)
class AccessRecord:
    access: bearer.AccessToken
    revoked: bool

    def check_client(self, client: Client) -> bool:
        return self.access.client_id == client.client_id

    def get_scope(self) -> str:
        return " ".join(sorted(self.access.scopes))

    def is_expired(self) -> bool:
        return self.access.expires_at <= time.time()

    def is_revoked(self) -> bool:
        return self.revoked


class TokenLookup:
    """Authlib's ``query_token`` for both endpoints."""

    server: Provider

    def query_token(self, token: str, hint: str | None) -> RefreshRecord | AccessRecord | None:
        if len(token) > bearer.MAX_TOKEN_LENGTH:
            return None
        execution = self.server.execution
        if "." in token:
            access = tokens.verify_access_token(self.server.runtime, token)
            if access is None:
                return None
            # Withdrawn, or its account no longer active: inactive (RFC 7662 §2.2).
            return AccessRecord(access, not holders.in_standing(execution.session(), access))
        lookup = refresh_lookup(token)
        row = execution.read(*lookup) if lookup is not None else None
        return RefreshRecord.of(row) if row is not None else None
