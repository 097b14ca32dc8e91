"""POSTing to an app's own endpoint from the outbox: the one SSRF-safe HTTP client.

Webhooks (:mod:`.delivery`) and OpenID Connect back-channel logout tokens
(identity.oidc.backchannel) both go out through :class:`PublicPoster`, so the address
rules and the outcomes are written once. The URL's name is resolved at every attempt and
every answer must be public (:mod:`.address`); the connection goes to the checked
address itself. Redirects are never followed, proxies from the environment never used.
The outcome is told the outbox's way, so its one retry policy applies: a 2xx returns; an
address that is not public is :class:`~carebridge.outbox.Undeliverable` at once; a
timeout, a refused connection, a redirect or any other status is
:class:`~carebridge.outbox.RetryLater` (backoff, then a dead letter).
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from carebridge.events import address
from carebridge.outbox import RetryLater, Undeliverable
from carebridge.settings import Settings


class PublicPoster:
    def __init__(
        self,
        settings: Settings,
        *,
        user_agent: str,
        resolver: address.Resolver = address.resolve,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.resolver = resolver
        self.allow_loopback = settings.webhook_allow_loopback and not settings.is_production
        # No redirects, no proxies from the environment: the checked address is the peer.
        self.client = httpx.Client(
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,
            trust_env=False,
            transport=transport,
            headers={"user-agent": user_agent},
        )

    def post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> None:
        """POST ``content`` to ``url``; returns on a 2xx, raises the outbox's outcome
        otherwise."""
        try:
            target = address.pin(url, self.resolver, allow_loopback=self.allow_loopback)
        except address.RefusedAddressError:
            raise Undeliverable("refused_address") from None
        except OSError:
            raise RetryLater("dns") from None
        headers = {
            **headers,
            # A connection per delivery: pooled connections are keyed by the pinned
            # address, so another name on that address would reuse one whose TLS
            # certificate was checked for the first name, never for its own.
            "connection": "close",
            "host": target.host,
        }
        try:
            # Streamed and closed unread: only the status counts, and a receiver's body
            # (endless, or dripped within each read's timeout) must not hold the worker.
            request = self.client.build_request(
                "POST", target.url, content=content, headers=headers, extensions=target.extensions
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
