"""The OpenID Connect provider's routes, for identity/routes.py."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from identity.oidc import authorize, endpoints, jwks, logout
from identity.oidc.paths import INTROSPECT_PATH, REVOKE_PATH, TOKEN_PATH, USERINFO_PATH


def routes() -> list[BaseRoute]:
    return [
        Route("/.well-known/jwks.json", jwks.jwks, name="jwks"),
        Route("/.well-known/openid-configuration", endpoints.openid_configuration),
        Route("/.well-known/oauth-authorization-server", endpoints.oauth_authorization_server),
        Route("/.well-known/smart-configuration", endpoints.smart_configuration),
        Route(TOKEN_PATH, endpoints.token, methods=["POST"], name="oidc_token"),
        Route(REVOKE_PATH, endpoints.revoke, methods=["POST"]),
        Route(INTROSPECT_PATH, endpoints.introspect, methods=["POST"]),
        Route(USERINFO_PATH, endpoints.userinfo, methods=["GET", "POST"]),
        *authorize.routes(),
        *logout.routes(),
    ]
