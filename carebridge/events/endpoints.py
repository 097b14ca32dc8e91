"""Registering webhook endpoints, and their signing secrets.

A secret is ``whsec_`` and 32 random bytes in base64 (the Standard Webhooks format),
shown once, to whoever registered or rotated the endpoint, and stored sealed under the
keyring's KEK, bound to its endpoint. Rotation keeps the previous secret signing too
(the spec's space-separated signatures) until the overlap ends, so an app can switch
without a delivery failing its check. Each change is audited.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.events import address
from carebridge.events.models import WebhookEndpoint
from carebridge.ids import new_id
from carebridge.keyring import Keyring, associated_data
from carebridge.settings import Settings
from carebridge.utc import utcnow

SECRET_PREFIX = "whsec_"  # noqa: S105  (the format's prefix, not a secret)
MAX_ENDPOINTS_PER_CLIENT = 5


class EndpointError(Exception):
    """A registration that cannot be carried out; the message is safe to show."""


@dataclass(frozen=True)
class EndpointInfo:
    id: str
    client_id: str
    url: str
    enabled: bool
    rotating_until: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class Created:
    """An endpoint just registered or rotated, with its new secret (shown this once)."""

    endpoint: EndpointInfo
    secret: str


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _aad(endpoint_id: str, which: str) -> bytes:
    return associated_data("webhook-secret", endpoint_id, which)


def seal_secret(keyring: Keyring, endpoint_id: str, secret: str) -> bytes:
    return keyring.encrypt(secret.encode(), _aad(endpoint_id, "secret"))


def signing_secrets(keyring: Keyring, endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets a delivery is signed with now: the current one, and the previous one
    while a rotation's overlap lasts."""
    found = [keyring.decrypt(endpoint.secret_sealed, _aad(endpoint.id, "secret")).decode()]
    if (
        endpoint.previous_secret_sealed is not None
        and endpoint.previous_until is not None
        and now < endpoint.previous_until
    ):
        previous = keyring.decrypt(endpoint.previous_secret_sealed, _aad(endpoint.id, "secret"))
        found.append(previous.decode())
    return found


def check_url(settings: Settings, url: str) -> str:
    """https only in production (http too in development and tests); an ASCII host
    name or a public address, no credentials, no fragment. Where the name resolves is checked at
    every delivery (carebridge.events.address), not here: DNS answers change."""
    url = url.strip()
    if len(url) > 2000:
        raise EndpointError("The URL is too long.")
    parts = urlsplit(url)
    allowed = ("https",) if settings.is_production else ("https", "http")
    if parts.scheme not in allowed:
        raise EndpointError("The URL must start with https://.")
    # "@" at all, not just a user name: "https://@host/" has an empty one.
    if not parts.hostname or "@" in parts.netloc or parts.fragment:
        raise EndpointError("The URL needs a host, and no credentials or fragment.")
    if not parts.hostname.isascii():
        # Sent as Host and TLS server name, which are ASCII; and a look-alike letter
        # (a Cyrillic letter for a Latin one) is not for an operator to spot in a listing.
        raise EndpointError("Write the URL's host name in its ASCII form (xn--...).")
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        literal = None
    loopback = settings.webhook_allow_loopback and not settings.is_production
    if literal is not None and not address.is_allowed(literal, allow_loopback=loopback):
        raise EndpointError("The URL's address is not a public one.")
    try:
        parts.port  # noqa: B018  (raises on a port out of range)
    except ValueError as exc:
        raise EndpointError("The URL's port is not valid.") from exc
    return url


def _info(endpoint: WebhookEndpoint, now: datetime) -> EndpointInfo:
    rotating = endpoint.previous_until
    return EndpointInfo(
        id=endpoint.id,
        client_id=endpoint.client_id,
        url=endpoint.url,
        enabled=endpoint.enabled,
        rotating_until=rotating if rotating is not None and rotating > now else None,
        created_at=endpoint.created_at,
    )


def _audit(db: Session, actor: str, action: str, endpoint: WebhookEndpoint) -> None:
    audit.append(
        db,
        actor=actor,
        action=action,
        outcome=Outcome.ALLOWED,
        target=f"webhook:{endpoint.id}",
        request_id=None,
    )


def add(
    db: Session, keyring: Keyring, settings: Settings, *, client_id: str, url: str, actor: str
) -> Created:
    """Register an endpoint for ``client_id`` (the caller checked the client exists)."""
    url = check_url(settings, url)
    count = len(
        db.scalars(select(WebhookEndpoint.id).where(WebhookEndpoint.client_id == client_id)).all()
    )
    if count >= MAX_ENDPOINTS_PER_CLIENT:
        raise EndpointError(f"A client has at most {MAX_ENDPOINTS_PER_CLIENT} endpoints.")
    now = utcnow()
    endpoint_id = new_id("whk")
    secret = new_secret()
    endpoint = WebhookEndpoint(
        id=endpoint_id,
        client_id=client_id,
        url=url,
        secret_sealed=seal_secret(keyring, endpoint_id, secret),
        previous_secret_sealed=None,
        previous_until=None,
        enabled=True,
        created_at=now,
        updated_at=now,
    )
    db.add(endpoint)
    db.flush()
    _audit(db, actor, "webhook.add", endpoint)
    return Created(_info(endpoint, now), secret)


def list_endpoints(db: Session, client_id: str | None = None) -> list[EndpointInfo]:
    query = select(WebhookEndpoint).order_by(WebhookEndpoint.client_id, WebhookEndpoint.created_at)
    if client_id is not None:
        query = query.where(WebhookEndpoint.client_id == client_id)
    now = utcnow()
    return [_info(endpoint, now) for endpoint in db.scalars(query)]


def _get(db: Session, endpoint_id: str, client_id: str | None) -> WebhookEndpoint:
    endpoint = db.get(WebhookEndpoint, endpoint_id, with_for_update=True)
    if endpoint is None or (client_id is not None and endpoint.client_id != client_id):
        raise EndpointError("No such webhook endpoint.")
    return endpoint


def set_enabled(
    db: Session, endpoint_id: str, *, enabled: bool, actor: str, client_id: str | None = None
) -> EndpointInfo:
    """Disable (deliveries already queued become dead letters, replayable) or enable."""
    endpoint = _get(db, endpoint_id, client_id)
    now = utcnow()
    if endpoint.enabled != enabled:
        endpoint.enabled, endpoint.updated_at = enabled, now
        _audit(db, actor, "webhook.enable" if enabled else "webhook.disable", endpoint)
    return _info(endpoint, now)


def disable_client(db: Session, client_id: str) -> int:
    """Disable every endpoint of a client that was itself disabled (a compromised or
    retired app): its receiver hears nothing more, queued deliveries become dead
    letters. The client's disabling is the audited act. Returns how many."""
    result = db.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.client_id == client_id, WebhookEndpoint.enabled.is_(True))
        .values(enabled=False, updated_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)


def rotate(
    db: Session,
    keyring: Keyring,
    settings: Settings,
    endpoint_id: str,
    *,
    actor: str,
    client_id: str | None = None,
) -> Created:
    """A new secret; the current one keeps signing too for the configured overlap."""
    endpoint = _get(db, endpoint_id, client_id)
    now = utcnow()
    secret = new_secret()
    overlap = timedelta(hours=settings.webhook_secret_overlap_hours)
    if overlap:
        endpoint.previous_secret_sealed = endpoint.secret_sealed
        endpoint.previous_until = now + overlap
    else:
        endpoint.previous_secret_sealed, endpoint.previous_until = None, None
    endpoint.secret_sealed = seal_secret(keyring, endpoint.id, secret)
    endpoint.updated_at = now
    _audit(db, actor, "webhook.rotate", endpoint)
    return Created(_info(endpoint, now), secret)
