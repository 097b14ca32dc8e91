"""The JSON Web Key Set (RFC 7517 §5): the public half of every signing key.

After ``carebridge keys rotate`` it lists the new key and the older ones, so tokens signed
before the rotation keep verifying until they expire.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from carebridge.runtime import Runtime


async def jwks(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    # Public keys: caches may keep them briefly; a rotation shows within five minutes.
    return JSONResponse(
        runtime.keyring.jwks(),
        media_type="application/jwk-set+json",
        headers={"Cache-Control": "public, max-age=300"},
    )
