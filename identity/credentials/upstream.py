"""Upstream (social) sign-in: OpenID Connect providers by discovery, plain OAuth 2 providers
with a profile endpoint, both through Authlib's httpx client driven by hand.

- Every round trip gets a fresh ``state``, PKCE verifier (S256) and, for OpenID Connect,
  ``nonce``. They live server-side in ``upstream_login_state``: the row is found by a keyed
  hash of the state and holds the rest encrypted (bound to that hash). A state works once
  (deleted atomically as it is consumed), for ten minutes, and only in the browser that
  started it (its CSRF cookie's token rides along), so a callback link planted in another
  browser signs no one in (login CSRF).
- ID tokens are checked in full: signature against the provider's JWKS (asymmetric
  algorithms only), ``iss`` = the discovery document's issuer, ``aud`` = our client ID
  (and ``azp`` when there are several audiences or an ``azp`` at all), ``exp``, ``iat``
  and ``nonce``.
- A person upstream is (issuer, subject), never an email address.
- Every HTTP call has a timeout; discovery documents and key sets are cached briefly. A
  provider that is down, slow or answers nonsense raises :class:`UnavailableError`.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx2
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from cachetools import TTLCache
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry
from sqlalchemy import delete
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from carebridge.keyring import DecryptionError, associated_data
from carebridge.runtime import Runtime
from carebridge.settings import UpstreamProvider
from identity.models import UpstreamLoginState

STATE_TTL = timedelta(minutes=10)
CACHE_SECONDS = 300.0
LEEWAY_SECONDS = 60
# Asymmetric only: an HMAC "signature" keyed with our client secret, or none, is refused.
ID_TOKEN_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "EdDSA")


class UpstreamError(Exception):
    """Signing in through a provider failed; the message is safe to log, not to show."""


class UnavailableError(UpstreamError):
    """The provider is down, slow, or answered something that is not a valid response."""


class RefusedError(UpstreamError):
    """The provider answered with an OAuth error (the person cancelled, a code expired)."""


class InvalidIdTokenError(UpstreamError):
    """The ID token failed validation: signature, issuer, audience, expiry or nonce."""


class InvalidStateError(UpstreamError):
    """The state is unknown, used, expired, for another provider or another browser."""


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in."""

    issuer: str
    subject: str


@dataclass(frozen=True)
class LoginState:
    """What a round trip carries through the state table (encrypted)."""

    provider: str
    nonce: str
    code_verifier: str
    browser: str
    next: str
    link_account: str | None = None


def providers(runtime: Runtime) -> tuple[UpstreamProvider, ...]:
    """The configured providers, in the file's order (for "Sign in with …" buttons)."""
    return runtime.settings.upstream_providers


def get(runtime: Runtime, name: str) -> UpstreamProvider | None:
    return next((p for p in runtime.settings.upstream_providers if p.name == name), None)


def redirect_uri(runtime: Runtime, provider: UpstreamProvider) -> str:
    # Built from the configured issuer, never from the request's Host header.
    return f"{runtime.settings.issuer}/signin/upstream/{provider.name}/callback"


# HTTP, with timeouts and a small cache


# Discovery documents and key sets of the configured providers: a few URLs. Only the
# event loop uses it (no lock).
_cache: TTLCache[str, dict[str, Any]] = TTLCache(64, CACHE_SECONDS)


async def _get_json(url: str, timeout: float, *, fresh: bool = False) -> dict[str, Any]:
    cached = _cache.get(url)
    if cached is not None and not fresh:
        return cached
    try:
        async with httpx2.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            response = await client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
    except (httpx2.HTTPError, ValueError) as exc:
        raise UnavailableError(f"GET {_origin(url)} failed: {type(exc).__name__}") from None
    if not isinstance(document, dict):
        raise UnavailableError(f"GET {_origin(url)} did not answer a JSON object")
    _cache[url] = document
    return document


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _secure(url: object) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    return bool(parts.hostname) and (
        parts.scheme == "https" or (parts.scheme == "http" and loopback)
    )


async def metadata(provider: UpstreamProvider) -> dict[str, Any]:
    """An OpenID provider's discovery document, checked for what we use."""
    assert provider.discovery_url is not None  # noqa: S101  (settings require it for oidc)
    document = await _get_json(provider.discovery_url, provider.timeout_seconds)
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not _secure(document.get(name)):
            raise UnavailableError(f"discovery document of {provider.name} lacks a usable {name}")
    issuer = document.get("issuer")
    if not isinstance(issuer, str) or not 0 < len(issuer) <= 300:
        raise UnavailableError(f"discovery document of {provider.name} names no issuer")
    return document


async def _keys(provider: UpstreamProvider, jwks_uri: str, *, fresh: bool) -> KeySet:
    document = await _get_json(jwks_uri, provider.timeout_seconds, fresh=fresh)
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise UnavailableError(f"JWKS of {provider.name} is not a key set")
    signing = [k for k in keys if isinstance(k, dict) and k.get("use", "sig") == "sig"]
    try:
        return KeySet.import_key_set({"keys": signing})
    except (JoseError, ValueError, TypeError, KeyError):
        raise UnavailableError(f"JWKS of {provider.name} holds no usable key") from None


# The state table


def _state_hash(runtime: Runtime, state: str) -> str:
    return runtime.keyring.lookup_hash("upstream-state", state)


def _aad(state_hash: str, provider: str) -> bytes:
    return associated_data("upstream-state", state_hash, provider)


def save_state(db: Session, runtime: Runtime, state: str, login: LoginState) -> None:
    """Remember a round trip; expired ones are swept on the way."""
    now = datetime.now(UTC)
    db.execute(delete(UpstreamLoginState).where(UpstreamLoginState.expires_at < now))
    state_hash = _state_hash(runtime, state)
    payload = json.dumps(asdict(login)).encode("utf-8")
    db.add(
        UpstreamLoginState(
            state_hash=state_hash,
            provider=login.provider,
            payload=runtime.keyring.encrypt(payload, _aad(state_hash, login.provider)),
            expires_at=now + STATE_TTL,
        )
    )


def consume_state(
    db: Session, runtime: Runtime, *, provider: str, state: str, browser: str
) -> LoginState:
    """The round trip a callback belongs to, deleted as it is read: a second use fails."""
    state_hash = _state_hash(runtime, state)
    row = db.execute(
        delete(UpstreamLoginState)
        .where(UpstreamLoginState.state_hash == state_hash)
        .returning(
            UpstreamLoginState.provider,
            UpstreamLoginState.payload,
            UpstreamLoginState.expires_at,
        )
    ).first()
    if row is None:
        raise InvalidStateError("unknown or already used state")
    if row.expires_at <= datetime.now(UTC):
        raise InvalidStateError("expired state")
    if row.provider != provider:
        raise InvalidStateError("state of another provider")
    try:
        login = LoginState(
            **json.loads(runtime.keyring.decrypt(row.payload, _aad(state_hash, provider)))
        )
    except (DecryptionError, ValueError, TypeError):
        raise InvalidStateError("state payload does not open") from None
    if not secrets.compare_digest(login.browser.encode(), browser.encode()):
        raise InvalidStateError("state started in another browser")
    return login


# The round trip


def _client(runtime: Runtime, provider: UpstreamProvider) -> Any:
    return AsyncOAuth2Client(
        client_id=provider.client_id,
        client_secret=provider.client_secret.get_secret_value(),
        token_endpoint_auth_method=provider.token_endpoint_auth_method,
        scope=" ".join(provider.request_scopes),
        redirect_uri=redirect_uri(runtime, provider),
        code_challenge_method="S256",
        timeout=provider.timeout_seconds,
        follow_redirects=False,
    )


async def begin(
    runtime: Runtime,
    provider: UpstreamProvider,
    *,
    browser: str,
    next_path: str,
    link_account: str | None = None,
) -> str:
    """Start a round trip: store its state, return the provider's authorization URL."""
    if provider.kind == "oidc":
        endpoint = (await metadata(provider))["authorization_endpoint"]
    else:
        assert provider.authorize_url is not None  # noqa: S101  (settings require it)
        endpoint = provider.authorize_url
    state = secrets.token_urlsafe(32)
    login = LoginState(
        provider=provider.name,
        nonce=secrets.token_urlsafe(32),
        code_verifier=secrets.token_urlsafe(64),
        browser=browser,
        next=next_path,
        link_account=link_account,
    )

    def save() -> None:
        with runtime.sessions.begin() as db:
            save_state(db, runtime, state, login)

    await run_in_threadpool(save)
    extra = {"nonce": login.nonce, "response_mode": "query"} if provider.kind == "oidc" else {}
    async with _client(runtime, provider) as client:
        url, _ = client.create_authorization_url(
            endpoint, state=state, code_verifier=login.code_verifier, **extra
        )
    return str(url)


async def finish(
    runtime: Runtime, provider: UpstreamProvider, login: LoginState, *, code: str, iss: str | None
) -> Identity:
    """Exchange the code (with the PKCE verifier) and establish who signed in."""
    document = await metadata(provider) if provider.kind == "oidc" else {}
    # RFC 9207: a provider that names itself in the response must name itself.
    if iss is not None and document and iss != document["issuer"]:
        raise RefusedError("the authorization response names another issuer")
    token_url = document.get("token_endpoint") or provider.token_url
    async with _client(runtime, provider) as client:
        try:
            token = await client.fetch_token(
                token_url,
                grant_type="authorization_code",
                code=code,
                code_verifier=login.code_verifier,
            )
            if provider.kind == "oidc":
                return await _identity_from_id_token(provider, document, token, login.nonce)
            response = await client.get(provider.userinfo_url)
            response.raise_for_status()
            profile = response.json()
        except OAuthError as exc:
            raise RefusedError(f"token endpoint answered {exc.error}") from None
        except (httpx2.HTTPError, ValueError, TypeError, AttributeError) as exc:
            # TypeError, AttributeError: Authlib reading a token response of the wrong shape
            # ({"token_type": 5}, {"expires_in": [1]}).
            raise UnavailableError(f"{provider.name} failed: {type(exc).__name__}") from None
    return Identity(provider.subject_issuer, _subject_from_profile(provider, profile))


async def _identity_from_id_token(
    provider: UpstreamProvider, document: dict[str, Any], token: dict[str, Any], nonce: str
) -> Identity:
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise InvalidIdTokenError("the token response carries no ID token")
    keys = await _keys(provider, document["jwks_uri"], fresh=False)
    check = {"issuer": document["issuer"], "client_id": provider.client_id, "nonce": nonce}
    try:
        claims = validate_id_token(id_token, keys, **check)
    except InvalidIdTokenError:
        # The provider may have rotated its keys since we cached them: look once more.
        fresh = await _keys(provider, document["jwks_uri"], fresh=True)
        claims = validate_id_token(id_token, fresh, **check)
    return Identity(document["issuer"], claims["sub"])


def validate_id_token(
    id_token: str,
    keys: KeySet,
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    now: int | None = None,
) -> dict[str, Any]:
    """The ID token's claims if it is genuine and meant for this round trip; else raise."""
    registry = JWTClaimsRegistry(
        now=now,
        leeway=LEEWAY_SECONDS,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": client_id},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    try:
        claims = jwt.decode(id_token, keys, algorithms=list(ID_TOKEN_ALGORITHMS)).claims
        registry.validate(claims)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise InvalidIdTokenError(f"ID token refused: {type(exc).__name__}") from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    # OIDC Core 3.1.3.7: with several audiences azp must be us; an azp present must be us.
    if (len(audiences) > 1 or "azp" in claims) and claims.get("azp") != client_id:
        raise InvalidIdTokenError("ID token refused: azp is not us")
    if not isinstance(claims["sub"], str) or not 0 < len(claims["sub"]) <= 255:
        raise InvalidIdTokenError("ID token refused: unusable sub")
    return claims


def _subject_from_profile(provider: UpstreamProvider, profile: object) -> str:
    value = profile
    for part in provider.subject_field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    # Some providers number their users (GitHub); booleans are not IDs.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 0 < len(value) <= 255:
        raise UnavailableError(f"{provider.name}'s profile has no usable {provider.subject_field}")
    return value
