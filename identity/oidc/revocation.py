"""Token revocation (RFC 7009)."""

from __future__ import annotations

from typing import Any, ClassVar

from authlib.oauth2.rfc7009 import RevocationEndpoint

from identity.oidc import withdrawals
from identity.oidc.grants import CLIENT_AUTH_METHODS, RefreshRecord
from identity.oidc.token_lookup import AccessRecord, TokenLookup


class Revocation(TokenLookup, RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = [*CLIENT_AUTH_METHODS, "none"]

    def revoke_token(self, token: RefreshRecord | AccessRecord, request: Any) -> None:
        session = self.server.execution.session()
        if isinstance(token, AccessRecord):
            withdrawals.withdraw_token(session, token.access)
        else:
            # The whole grant goes: its successors and its access tokens too (RFC 7009 §2.1).
            withdrawals.end_family(session, token.family_id)
