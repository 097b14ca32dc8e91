"""identity's HTTP routes, for carebridge.app to mount."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from identity.oidc import jwks


def routes() -> list[BaseRoute]:
    return [
        Route("/.well-known/jwks.json", jwks.jwks, name="jwks"),
    ]
