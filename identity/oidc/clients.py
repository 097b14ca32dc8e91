"""Registered clients: creation, secrets (shown once, stored as SHA-256), and the
read-only view Authlib's grants ask questions of."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import select
from sqlalchemy.orm import Session

from carebridge import events
from carebridge.events.endpoints import EndpointError, check_url
from carebridge.http import boundary
from carebridge.settings import Settings
from identity.models import new_id
from identity.oidc import scopes as scope_rules
from identity.oidc import withdrawals
from identity.oidc.models import OidcClient

CONFIDENTIAL = "confidential"
PUBLIC = "public"
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ClientError(ValueError):
    """A registration that cannot be accepted; the message names the field."""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


@dataclass(frozen=True)
class Client:
    """A client as Authlib's ``ClientMixin`` expects it, detached from any DB session."""

    client_id: str
    name: str
    client_type: str
    auth_method: str
    secret_hash: str | None
    jwks: str | None
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    scopes: frozenset[str]
    first_party: bool
    sector: str
    access_token_seconds: int | None
    refresh_token_seconds: int | None

    @classmethod
    def of(cls, row: OidcClient) -> Client:
        return cls(
            client_id=row.client_id,
            name=row.name,
            client_type=row.client_type,
            auth_method=row.token_endpoint_auth_method,
            secret_hash=row.secret_hash,
            jwks=row.jwks,
            redirect_uris=tuple(row.redirect_uris.split()),
            post_logout_redirect_uris=tuple(row.post_logout_redirect_uris.split()),
            scopes=frozenset(row.scopes.split()),
            first_party=row.first_party,
            sector=row.sector,
            access_token_seconds=row.access_token_seconds,
            refresh_token_seconds=row.refresh_token_seconds,
        )

    @property
    def is_public(self) -> bool:
        return self.client_type == PUBLIC

    # Authlib's ClientMixin

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # Every authorization request must name its redirect URI (exact match).
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The requested scopes if this client may have every one, else None
        (invalid_scope): a request is never silently narrowed."""
        requested = scope_rules.split(scope)
        if not requested:
            return None
        for item in requested:
            if item in scope_rules.CLIENT_ONLY_SCOPES or not scope_rules.allows(self.scopes, item):
                return None
        return " ".join(requested)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.secret_hash is None:
            return False
        return secrets.compare_digest(hash_secret(client_secret), self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type in ("authorization_code", "refresh_token"):
            return True
        return grant_type == "client_credentials" and not self.is_public

    def public_keys(self) -> KeySet:
        return KeySet.import_key_set(json.loads(self.jwks or '{"keys": []}'))


def find(db: Session, client_id: str) -> Client | None:
    """An enabled client by ID, or None. An ID that is not text (a control character, a
    lone surrogate: from a JWT's claims, which the input boundary cannot see into) is
    no client's, and never reaches the database."""
    if not client_id or len(client_id) > 100 or not boundary.is_text(client_id):
        return None
    row = db.get(OidcClient, client_id)
    if row is None or row.disabled_at is not None:
        return None
    return Client.of(row)


def _check_redirect_uri(uri: str, settings: Settings) -> None:
    parts = urlsplit(uri)
    if parts.fragment or " " in uri or not parts.scheme:
        raise ClientError(f"--redirect-uri {uri!r}: must be absolute, without a fragment")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise ClientError(f"--redirect-uri {uri!r}: http is allowed on loopback only")
    if parts.scheme in ("javascript", "data", "file"):
        raise ClientError(f"--redirect-uri {uri!r}: scheme not allowed")
    if parts.scheme == "https" and not parts.hostname:
        raise ClientError(f"--redirect-uri {uri!r}: needs a host")


def _auth_method(client_type: str, auth_method: str | None, jwks: dict[str, Any] | None) -> str:
    method = auth_method or ("none" if client_type == PUBLIC else "client_secret_basic")
    if method not in AUTH_METHODS:
        raise ClientError(f"--auth-method: one of {', '.join(AUTH_METHODS)}")
    if (client_type == PUBLIC) != (method == "none"):
        raise ClientError("--auth-method: public clients use 'none', confidential ones not")
    if method == "private_key_jwt":
        if not jwks:
            raise ClientError("--jwks: private_key_jwt needs the client's public keys")
        try:
            keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError):
            raise ClientError("--jwks: not a JSON Web Key Set") from None
        if any(key.is_private or key.key_type == "oct" for key in keys.keys):
            raise ClientError("--jwks: public EC or RSA keys only")
    return method


@dataclass(frozen=True)
class Created:
    client_id: str
    secret: str | None


def create(
    db: Session,
    settings: Settings,
    *,
    name: str,
    client_type: str,
    redirect_uris: list[str],
    scopes: list[str],
    auth_method: str | None = None,
    jwks: dict[str, Any] | None = None,
    post_logout_redirect_uris: list[str] | None = None,
    first_party: bool = False,
    sector: str | None = None,
    access_token_seconds: int | None = None,
    refresh_token_seconds: int | None = None,
    backchannel_logout_uri: str | None = None,
) -> Created:
    if not name.strip() or len(name) > 100:
        raise ClientError("--name: 1 to 100 characters")
    if client_type not in (CONFIDENTIAL, PUBLIC):
        raise ClientError("--type: confidential or public")
    method = _auth_method(client_type, auth_method, jwks)
    for uri in [*redirect_uris, *(post_logout_redirect_uris or [])]:
        _check_redirect_uri(uri, settings)
    if backchannel_logout_uri is not None:
        # The webhooks' rules (https in production, no credentials or fragment, a public
        # literal address): the same client delivers both (carebridge.events.outbound).
        try:
            backchannel_logout_uri = check_url(settings, backchannel_logout_uri)
        except EndpointError as exc:
            raise ClientError(f"--backchannel-logout-uri: {exc}") from None
    for scope in scopes:
        if not scope_rules.is_known(scope):
            raise ClientError(f"--scope {scope!r}: unknown scope")
    if client_type == PUBLIC and set(scopes) & scope_rules.CLIENT_ONLY_SCOPES:
        raise ClientError("--scope: admin scopes are for confidential back ends only")
    for lifetime, flag, most in (
        (access_token_seconds, "--access-token-seconds", 3600),
        (refresh_token_seconds, "--refresh-token-seconds", 365 * 86400),
    ):
        if lifetime is not None and not 60 <= lifetime <= most:
            raise ClientError(f"{flag}: between 60 and {most}")
    if sector is None:
        # Clients on one host share a sector, as OpenID Connect Core §8.1 describes.
        hosts = {urlsplit(uri).hostname or "" for uri in redirect_uris}
        sector = hosts.pop() if len(hosts) == 1 else ""
    client_id = new_id("cli")
    secret = new_secret() if method in ("client_secret_basic", "client_secret_post") else None
    db.add(
        OidcClient(
            client_id=client_id,
            name=name.strip(),
            client_type=client_type,
            token_endpoint_auth_method=method,
            secret_hash=hash_secret(secret) if secret else None,
            jwks=json.dumps(jwks) if jwks else None,
            redirect_uris=" ".join(redirect_uris),
            post_logout_redirect_uris=" ".join(post_logout_redirect_uris or []),
            backchannel_logout_uri=backchannel_logout_uri,
            scopes=" ".join(dict.fromkeys(scopes)),
            first_party=first_party,
            # Without a shared host, the client is its own sector.
            sector=sector or client_id,
            access_token_seconds=access_token_seconds,
            refresh_token_seconds=refresh_token_seconds,
            created_at=datetime.now(UTC),
        )
    )
    db.flush()
    return Created(client_id, secret)


def rotate_secret(db: Session, client_id: str) -> str:
    row = db.get(OidcClient, client_id)
    if row is None:
        raise ClientError(f"no client {client_id}")
    if row.token_endpoint_auth_method not in ("client_secret_basic", "client_secret_post"):
        raise ClientError(f"client {client_id} does not authenticate with a secret")
    secret = new_secret()
    row.secret_hash = hash_secret(secret)
    row.secret_rotated_at = datetime.now(UTC)
    return secret


def disable(db: Session, client_id: str) -> bool:
    """Disable a client; False if it was already. Its refresh tokens are revoked,
    every access token it holds is withdrawn, client-credentials ones included, and
    its webhook endpoints are disabled."""
    row = db.get(OidcClient, client_id)
    if row is None:
        raise ClientError(f"no client {client_id}")
    if row.disabled_at is not None:
        return False
    row.disabled_at = datetime.now(UTC)
    withdrawals.end_client(db, client_id)
    # Its webhooks too: the feed asks for a token, a receiver would hear on regardless.
    events.disable_client(db, client_id)
    return True


def all_clients(db: Session) -> list[OidcClient]:
    return list(db.scalars(select(OidcClient).order_by(OidcClient.created_at)))
