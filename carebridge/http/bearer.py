"""OAuth 2.0 bearer access tokens (RFC 6750) in the JWT profile (RFC 9068), checked offline.

The APIs check the identity part's tokens the way an external resource server would:
signature against the published key set, then ``typ``, issuer, audience, lifetime and
scope. Nothing here reads the database: mapping ``sub`` to a person, and whether the
token was withdrawn before it expired, is the caller's job (identity.oidc.holders, one
statement per request), answered with :func:`invalid_token` when it was.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from cachetools import TLRUCache
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from starlette.requests import HTTPConnection

from carebridge.http.problems import Problem

# Asymmetric algorithms only: "none" and HS256 (keyed with a public key) are refused here.
ALGORITHMS = ["ES256", "RS256"]
MAX_TOKEN_LENGTH = 4096
LEEWAY_SECONDS = 30


class InvalidTokenError(Exception):
    """Why a presented token was refused (safe to show: it names no claim value)."""


@dataclass(frozen=True)
class AccessToken:
    subject: str
    client_id: str
    scopes: frozenset[str]
    jti: str
    expires_at: int
    claims: dict[str, Any]

    @property
    def is_client_only(self) -> bool:
        """A client-credentials token: it acts for the client, not for a person."""
        return self.subject == self.client_id


def verify(
    token: str, keys: KeySet, *, issuer: str, audience: str, now: float | None = None
) -> AccessToken:
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidTokenError("The access token is malformed.")
    try:
        decoded = jwt.decode(token, keys, algorithms=ALGORITHMS)
    except (JoseError, ValueError, KeyError, TypeError):
        # Unknown kid, bad signature, refused alg, not a JWS at all: one answer.
        raise InvalidTokenError("The access token is invalid.") from None
    claims = decoded.claims
    typ = decoded.header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in ("at+jwt", "application/at+jwt"):
        raise InvalidTokenError("The token is not an access token.")
    moment = time.time() if now is None else now
    audiences = claims.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else audiences or []
    if claims.get("iss") != issuer or audience not in audiences:
        raise InvalidTokenError("The access token was not issued for this API.")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int) or not isinstance(iat, int):
        raise InvalidTokenError("The access token is malformed.")
    if exp + LEEWAY_SECONDS < moment:
        raise InvalidTokenError("The access token has expired.")
    if iat - LEEWAY_SECONDS > moment:
        raise InvalidTokenError("The access token is not valid yet.")
    subject, client_id = claims.get("sub"), claims.get("client_id")
    jti, scope = claims.get("jti"), claims.get("scope", "")
    if not (isinstance(subject, str) and subject and isinstance(client_id, str) and client_id):
        raise InvalidTokenError("The access token is malformed.")
    if not (isinstance(jti, str) and isinstance(scope, str)):
        raise InvalidTokenError("The access token is malformed.")
    return AccessToken(
        subject=subject,
        client_id=client_id,
        scopes=frozenset(scope.split()),
        jti=jti,
        expires_at=exp,
        claims=dict(claims),
    )


class VerifiedTokens:
    """Tokens this process has verified, remembered until they expire.

    The signature check is the costliest step of an API request, and an app presents the
    same token many times in its ten-minute life. Only successful verifications are kept,
    keyed by the whole token and by the runtime that checked it (its key set, issuer and
    audience): a token is never accepted here that :func:`verify` would refuse, expiry
    included. Bounded: when full, expired tokens go first, then the least recently used.
    Requests check tokens on the event loop and in worker threads: one lock around it.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        # An entry lives until its token expires.
        self._seen: TLRUCache[str, tuple[object, AccessToken]] = TLRUCache(
            capacity, _expiry, timer=_clock
        )
        self._lock = threading.Lock()

    def get(self, token: str, owner: object, now: float) -> AccessToken | None:
        with self._lock:
            found = self._seen.get(token)
        if found is None or found[0] is not owner or _expiry(token, found, now) < now:
            return None
        return found[1]

    def put(self, token: str, owner: object, access: AccessToken) -> None:
        with self._lock:
            self._seen[token] = (owner, access)


def _clock() -> float:
    # Looked up at each call, not bound once: the clock is this module's time.
    return time.time()


def _expiry(_token: str, entry: tuple[object, AccessToken], _now: float) -> float:
    return entry[1].expires_at + LEEWAY_SECONDS


VERIFIED = VerifiedTokens()


def presented(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _challenge(error: str | None = None, description: str | None = None, scope: str = "") -> str:
    parts = ['Bearer realm="carebridge"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return ", ".join(parts)


def invalid_token(description: str) -> Problem:
    """401 with an ``invalid_token`` challenge (RFC 6750 §3.1): for a token this module
    accepts but its issuer has since withdrawn (the caller's check)."""
    return Problem(401, description, {"WWW-Authenticate": _challenge("invalid_token", description)})


def require(connection: HTTPConnection, *scopes: str) -> AccessToken:
    """The request's valid access token carrying every one of ``scopes``, or a problem:
    401 with a ``WWW-Authenticate`` challenge (RFC 6750 §3), 403 for a missing scope."""
    runtime = connection.app.state.runtime
    token = presented(connection)
    if token is None:
        raise Problem(401, "An access token is required.", {"WWW-Authenticate": _challenge()})
    access = VERIFIED.get(token, runtime, time.time())
    if access is None:
        try:
            access = verify(
                token,
                runtime.keyring.verification_keys(),
                issuer=runtime.settings.issuer,
                audience=runtime.settings.api_audience,
            )
        except InvalidTokenError as exc:
            raise invalid_token(str(exc)) from None
        VERIFIED.put(token, runtime, access)
    missing = [scope for scope in scopes if scope not in access.scopes]
    if missing:
        wanted = " ".join(scopes)
        challenge = _challenge("insufficient_scope", "The token lacks a required scope.", wanted)
        raise Problem(
            403, "The access token lacks a required scope.", {"WWW-Authenticate": challenge}
        )
    return access
