"""/.well-known/jwks.json: public signing keys, before and after `carebridge keys rotate`."""

from __future__ import annotations

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.cli import main
from carebridge.keyring import associated_data
from carebridge.runtime import Runtime
from carebridge.settings import Settings


def test_jwks_serves_public_keys_only(client: TestClient, runtime: Runtime) -> None:
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/jwk-set+json"
    (key,) = response.json()["keys"]
    assert key["kid"] == runtime.keyring.active_signing_key.kid
    assert {"d", "p", "q", "dp", "dq", "qi"}.isdisjoint(key)


def test_rotation_keeps_old_data_readable_and_jwks_lists_both_keys(
    settings: Settings, cli_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    before = Runtime.build(settings)
    aad = associated_data("thread", "t_1")
    sealed = before.keyring.encrypt(b"wrapped data key", aad)
    old_kid = before.keyring.active_signing_key.kid
    token = jwt.encode(
        {"alg": "ES256", "kid": old_kid}, {"sub": "p"}, before.keyring.active_signing_key.key
    )
    before.close()

    assert main(["keys", "rotate"]) == 0
    capsys.readouterr()

    after = Runtime.build(settings)
    with TestClient(create_app(after)) as client:
        keys = client.get("/.well-known/jwks.json").json()
    after.close()
    kids = [key["kid"] for key in keys["keys"]]
    assert kids == [after.keyring.active_signing_key.kid, old_kid]
    assert after.keyring.decrypt(sealed, aad) == b"wrapped data key"
    assert jwt.decode(token, KeySet.import_key_set(keys)).claims["sub"] == "p"
