"""identity's HTTP routes, for carebridge.app to mount."""

from __future__ import annotations

from starlette.routing import BaseRoute

from identity.flows import (
    account,
    activate,
    admin,
    delete_account,
    email_change,
    email_verification,
    mfa,
    password_change,
    reauth,
    recovery,
    reset,
    signin,
    signout,
    signup,
    upstream,
    verify,
)
from identity.oidc import routes as oidc_routes


def routes() -> list[BaseRoute]:
    return [
        *oidc_routes.routes(),
        *signup.routes(),
        *signin.routes(),
        *email_verification.routes(),
        *signout.routes(),
        *upstream.routes(),
        *mfa.routes(),
        *reauth.routes(),
        *account.routes(),
        *password_change.routes(),
        *email_change.routes(),
        *delete_account.routes(),
        *activate.routes(),
        *verify.routes(),
        *reset.routes(),
        *recovery.routes(),
        *admin.routes(),
    ]
