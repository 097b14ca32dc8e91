"""identity's HTTP routes, for carebridge.app to mount."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from identity.flows import (
    account,
    activate,
    mfa,
    reauth,
    signin,
    signout,
    signup,
    upstream,
    verify,
)
from identity.oidc import jwks


def routes() -> list[BaseRoute]:
    return [
        Route("/.well-known/jwks.json", jwks.jwks, name="jwks"),
        *signup.routes(),
        *signin.routes(),
        *signout.routes(),
        *upstream.routes(),
        *mfa.routes(),
        *reauth.routes(),
        *account.routes(),
        *activate.routes(),
        *verify.routes(),
    ]
