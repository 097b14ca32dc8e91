"""The outbox's ``webhook`` channel: POST one event to one endpoint, signed.

The body is the Standard Webhooks payload (``type``, ``timestamp``, ``data``: IDs only);
``webhook-id`` is the event's ID (the same on every retry, so receivers deduplicate),
``webhook-timestamp`` the moment of this attempt, ``webhook-signature`` one ``v1,``
signature per secret in use (two during a rotation's overlap). A 2xx answer delivers it;
anything else (a redirect included: never followed), a timeout or a refused connection
is retried with the outbox's backoff, then dead-lettered. An address that is not public
(carebridge.events.address) is a dead letter at once, as is an event of a disabled
endpoint (both replayable by an operator).
"""

from __future__ import annotations

import json
import logging

import httpx
from sqlalchemy import select
from standardwebhooks import Webhook

from carebridge.events import address
from carebridge.events.emit import CHANNEL
from carebridge.events.endpoints import signing_secrets
from carebridge.events.models import Event, WebhookEndpoint
from carebridge.outbox import Message, RetryLater, Undeliverable
from carebridge.runtime import Runtime
from carebridge.utc import utcnow

log = logging.getLogger("carebridge.events")
USER_AGENT = "carebridge-webhooks/1"


def body_of(event: Event) -> bytes:
    payload = {
        "type": event.type,
        "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
        "data": {"event": event.id, **event.data},
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class WebhookHandler:
    """Registered by the composition root for the outbox's ``webhook`` channel."""

    channel = CHANNEL

    def __init__(
        self,
        runtime: Runtime,
        *,
        resolver: address.Resolver = address.resolve,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.runtime = runtime
        self.resolver = resolver
        settings = runtime.settings
        self.allow_loopback = settings.webhook_allow_loopback and not settings.is_production
        # No redirects, no proxies from the environment: the checked address is the peer.
        self.client = httpx.Client(
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,
            trust_env=False,
            transport=transport,
            headers={"user-agent": USER_AGENT},
        )

    def deliver(self, message: Message) -> None:
        now = utcnow()
        with self.runtime.sessions() as db:
            event = db.scalar(select(Event).where(Event.id == message.payload.get("event", "")))
            endpoint = db.get(WebhookEndpoint, message.payload.get("endpoint", ""))
            if event is None:
                raise Undeliverable("event_purged")
            if endpoint is None or not endpoint.enabled or endpoint.client_id != event.client_id:
                raise Undeliverable("endpoint_disabled")
            secrets = signing_secrets(self.runtime.keyring, endpoint, now)
            url = endpoint.url
            body = body_of(event)
            event_id = event.id
        signatures = " ".join(Webhook(secret).sign(event_id, now, body) for secret in secrets)
        try:
            target = address.pin(url, self.resolver, allow_loopback=self.allow_loopback)
        except address.RefusedAddressError:
            raise Undeliverable("refused_address") from None
        except OSError:
            raise RetryLater("dns") from None
        headers = {
            # A connection per delivery: pooled connections are keyed by the pinned
            # address, so another name on that address would reuse one whose TLS
            # certificate was checked for the first name, never for its own.
            "connection": "close",
            "host": target.host,
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signatures,
        }
        try:
            # Streamed and closed unread: only the status counts, and a receiver's body
            # (endless, or dripped within each read's timeout) must not hold the worker.
            request = self.client.build_request(
                "POST", target.url, content=body, headers=headers, extensions=target.extensions
            )
            response = self.client.send(request, stream=True)
            response.close()
        except httpx.TimeoutException:
            raise RetryLater("timeout") from None
        except httpx.HTTPError:
            raise RetryLater("connect") from None
        if 200 <= response.status_code < 300:
            return
        if 300 <= response.status_code < 400:
            raise RetryLater("redirect")
        raise RetryLater(f"http_{response.status_code}")
