"""Access tokens minted the way identity/oidc issues them (RFC 9068), for resource-server
tests that should not drive a whole authorization flow. The OIDC tests check the provider
issues this shape; its tokens a person authorized also carry ``grant_id`` (pass it as a
claim), which tests/identity/oidc/test_withdrawal.py covers through real flows."""

from __future__ import annotations

import secrets
import time
from typing import Any

from joserfc import jwt

from carebridge.keyring import SigningKey
from carebridge.runtime import Runtime


def mint(
    runtime: Runtime,
    *,
    sub: str,
    client_id: str,
    scope: str,
    lifetime: int = 600,
    key: SigningKey | None = None,
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    signing = key or runtime.keyring.active_signing_key
    now = int(time.time())
    payload = {
        "iss": runtime.settings.issuer,
        "aud": runtime.settings.api_audience,
        "sub": sub,
        "client_id": client_id,
        "scope": scope,
        "iat": now,
        "exp": now + lifetime,
        "jti": secrets.token_urlsafe(16),
        **claims,
    }
    head = {"alg": signing.alg, "typ": "at+jwt", "kid": signing.kid, **(header or {})}
    return jwt.encode(head, payload, signing.key, algorithms=[signing.alg])
