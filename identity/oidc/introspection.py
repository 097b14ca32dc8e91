"""Token introspection (RFC 7662), for confidential clients and their own tokens."""

from __future__ import annotations

from typing import Any, ClassVar

from authlib.oauth2.rfc7662 import IntrospectionEndpoint

from identity.oidc.clients import Client
from identity.oidc.grants import CLIENT_AUTH_METHODS, RefreshRecord
from identity.oidc.token_lookup import AccessRecord, TokenLookup


class Introspection(TokenLookup, IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = CLIENT_AUTH_METHODS  # confidential only

    def check_permission(self, token: Any, client: Client, request: Any) -> bool:
        # A client learns about its own tokens only.
        return bool(token.check_client(client))

    def introspect_token(self, token: RefreshRecord | AccessRecord) -> dict[str, Any]:
        settings = self.server.runtime.settings
        if isinstance(token, AccessRecord):
            access = token.access
            return {
                "active": True,
                "token_type": "Bearer",
                "client_id": access.client_id,
                "scope": access.claims.get("scope", ""),
                "sub": access.subject,
                "aud": settings.api_audience,
                "iss": settings.issuer,
                "exp": access.expires_at,
                "iat": access.claims.get("iat"),
                "jti": access.jti,
            }
        return {
            "active": True,
            "token_type": "refresh_token",
            "client_id": token.client_id,
            "scope": token.scope,
            "iss": settings.issuer,
            "exp": int(token.expires_at.timestamp()),
            "iat": int(token.issued_at.timestamp()),
        }
