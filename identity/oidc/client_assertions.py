"""Client authentication with a signed assertion: private_key_jwt (RFC 7523 §2.2,
OpenID Connect Core §9), asymmetric algorithms only, each assertion's ``jti`` recorded
so that it is used once."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from authlib.oauth2.rfc6749 import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy.exc import IntegrityError

from carebridge.http import boundary
from carebridge.runtime import Runtime
from identity.oidc.clients import Client
from identity.oidc.execution import Execution
from identity.oidc.models import OidcUsedAssertion
from identity.oidc.paths import INTROSPECT_PATH, REVOKE_PATH, TOKEN_PATH

ASSERTION_ALGORITHMS = ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "EdDSA"]

# Assertions verify until exp + this (clock skew); their jti is kept as long.
ASSERTION_LEEWAY_SECONDS = 30

# The one answer to an assertion that does not authenticate its client, whoever it names:
# an unknown client, a client without public keys (secret and public clients) and a bad
# signature cannot be told apart.
ASSERTION_NOT_VALID = "The assertion is not valid."


class PrivateKeyJwt(JWTBearerClientAssertion):  # type: ignore[misc]
    """One per request: its ``jti`` is recorded in the request's ``execution``."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, runtime: Runtime, execution: Execution) -> None:
        super().__init__(validate_jti=True, leeway=ASSERTION_LEEWAY_SECONDS)
        self.runtime = runtime
        self.execution = execution

    def __call__(self, query_client: Callable[[str], Client | None], request: Any) -> Any:
        def registered(client_id: str) -> Client:
            # Authlib says "does not exist" for an unknown client: answer as for a bad
            # signature instead (RFC 7523 §3.2 asks only for invalid_client).
            client = query_client(client_id)
            if client is None:
                raise InvalidClientError(description=ASSERTION_NOT_VALID)
            return client

        return super().__call__(registered, request)

    def get_audiences(self) -> list[str]:
        issuer = self.runtime.settings.issuer
        return [
            issuer,
            f"{issuer}{TOKEN_PATH}",
            f"{issuer}{REVOKE_PATH}",
            f"{issuer}{INTROSPECT_PATH}",
        ]

    def extract_assertion(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        headers, claims = super().extract_assertion(assertion)
        # "none" and HMAC (keyed with a public key) never authenticate a client.
        if headers.get("alg") not in ASSERTION_ALGORITHMS:
            raise InvalidClientError(description="The assertion's algorithm is not accepted.")
        return headers, claims

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        try:
            decoded = jwt.decode(assertion, resolve_key, algorithms=ASSERTION_ALGORITHMS)
        except Exception:  # noqa: BLE001  (any failure is the same refusal)
            raise InvalidClientError(description=ASSERTION_NOT_VALID) from None
        exp = decoded.claims.get("exp")
        if not isinstance(exp, int) or exp > time.time() + 600:
            # A long-lived assertion would need its jti remembered for as long.
            raise InvalidClientError(description="The assertion must expire within 10 minutes.")
        self.verify_claims(decoded.claims)
        return decoded.claims

    def resolve_client_public_key(self, client: Client) -> KeySet:
        # A client registered for another method has no keys (joserfc refuses an empty
        # set, which was a 500): the same refusal as a bad signature.
        if client.auth_method != self.CLIENT_AUTH_METHOD or not client.jwks:
            raise InvalidClientError(description=ASSERTION_NOT_VALID)
        try:
            return client.public_keys()
        except (JoseError, ValueError):
            raise InvalidClientError(description=ASSERTION_NOT_VALID) from None

    def validate_jti(self, claims: dict[str, Any], jti: Any) -> bool:
        # Signed by the client, but a claim all the same: text, or refused before storing.
        if not isinstance(jti, str) or not jti or len(jti) > 255 or not boundary.is_text(jti):
            return False
        expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
        session = self.execution.session()
        try:
            with session.begin_nested():
                session.add(OidcUsedAssertion(client_id=claims["sub"], jti=jti, expires_at=expires))
        except IntegrityError:
            return False
        return True
