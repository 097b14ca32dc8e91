"""PKCE (RFC 7636): S256, for every client (RFC 9700 §2.1.1)."""

from __future__ import annotations

import hmac
import re
from typing import Any, ClassVar

from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oauth2.rfc7636 import CodeChallenge, create_s256_code_challenge

# A code verifier (RFC 7636 §4.1): 43 to 128 unreserved characters.
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


class S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send a code_challenge (S256).")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256.")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("Missing 'code_verifier'.")
        super().validate_code_verifier(grant, result)


def matches(verifier: str, challenge: str) -> bool:
    """Whether ``verifier`` is a well-formed verifier of the S256 ``challenge``, compared
    in constant time."""
    if not _VERIFIER.fullmatch(verifier):
        return False
    computed = create_s256_code_challenge(verifier)
    return hmac.compare_digest(computed.encode(), challenge.encode())
