"""Client credentials, and client authentication by private_key_jwt (RFC 7523):
asymmetric algorithms only, replayed assertions refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from types import SimpleNamespace
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from starlette.requests import Request
from starlette.testclient import TestClient

from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity.oidc import clients
from identity.oidc import server as server_module
from tests.identity.oidc import helpers

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def backend_client(runtime: Runtime) -> helpers.Registered:
    return helpers.register(runtime, scopes="messaging.read messaging.write admin.roster openid")


def _cc(client: TestClient, registered: helpers.Registered, **data: str) -> Any:
    return client.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", **data},
        auth=helpers.basic(registered),
    )


def test_client_credentials_token_acts_for_the_client(
    client: TestClient, runtime: Runtime, backend_client: helpers.Registered
) -> None:
    response = _cc(client, backend_client, scope="messaging.read")
    assert response.status_code == 200, response.text
    body = response.json()
    assert "refresh_token" not in body and "id_token" not in body
    claims = jwt.decode(body["access_token"], runtime.keyring.verification_keys()).claims
    assert claims["sub"] == claims["client_id"] == backend_client.client_id
    assert claims["scope"] == "messaging.read"
    assert "auth_time" not in claims


def test_client_credentials_without_scope_gets_the_clients_api_scopes(
    client: TestClient, backend_client: helpers.Registered
) -> None:
    body = _cc(client, backend_client).json()
    assert body["scope"].split() == ["admin.roster", "messaging.read", "messaging.write"]


@pytest.mark.parametrize("scope", ["openid", "launch/patient", "patient/*.rs", "nonsense"])
def test_client_credentials_never_get_person_scopes(
    client: TestClient, backend_client: helpers.Registered, scope: str
) -> None:
    response = _cc(client, backend_client, scope=scope)
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"


def test_public_clients_cannot_use_client_credentials(client: TestClient, runtime: Runtime) -> None:
    public = helpers.register(runtime, client_type="public")
    response = client.post(
        "/oauth2/token", data={"grant_type": "client_credentials", "client_id": public.client_id}
    )
    assert response.status_code in (400, 401)
    assert response.json()["error"] in ("invalid_client", "unauthorized_client")


def test_a_disabled_client_cannot_get_tokens(
    client: TestClient, runtime: Runtime, backend_client: helpers.Registered
) -> None:
    with transaction(runtime.sessions) as db:
        clients.disable(db, backend_client.client_id)
    response = _cc(client, backend_client)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


# private_key_jwt


@pytest.fixture
def signing_key() -> ECKey:
    return ECKey.generate_key("P-256", private=True)


@pytest.fixture
def jwt_client(runtime: Runtime, signing_key: ECKey) -> helpers.Registered:
    public = {"keys": [{**signing_key.as_dict(private=False), "kid": "k1"}]}
    return helpers.register(
        runtime, scopes="messaging.read", auth_method="private_key_jwt", jwks=public
    )


def _assertion(
    runtime: Runtime,
    client_id: str,
    key: Any,
    alg: str = "ES256",
    *,
    jti: str | None = None,
    aud: str | None = None,
) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud or f"{runtime.settings.issuer}/oauth2/token",
        "iat": now,
        "exp": now + 60,
        "jti": jti or secrets.token_urlsafe(12),
    }
    return jwt.encode({"alg": alg, "kid": "k1"}, claims, key, algorithms=[alg])


def _with_assertion(client: TestClient, registered: helpers.Registered, assertion: str) -> Any:
    return client.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": registered.client_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )


def test_private_key_jwt_authenticates(
    client: TestClient, runtime: Runtime, jwt_client: helpers.Registered, signing_key: ECKey
) -> None:
    response = _with_assertion(
        client, jwt_client, _assertion(runtime, jwt_client.client_id, signing_key)
    )
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "messaging.read"


def test_a_replayed_assertion_is_refused(
    client: TestClient, runtime: Runtime, jwt_client: helpers.Registered, signing_key: ECKey
) -> None:
    assertion = _assertion(runtime, jwt_client.client_id, signing_key)
    assert _with_assertion(client, jwt_client, assertion).status_code == 200
    # The client is cached now: the assertion still goes through a transaction (its jti).
    again = _with_assertion(client, jwt_client, assertion)
    assert again.status_code in (400, 401) and again.json()["error"] == "invalid_client"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_assertions_are_refused(
    client: TestClient, runtime: Runtime, jwt_client: helpers.Registered
) -> None:
    now = int(time.time())
    claims = {
        "iss": jwt_client.client_id,
        "sub": jwt_client.client_id,
        "aud": f"{runtime.settings.issuer}/oauth2/token",
        "exp": now + 60,
        "jti": "none-1",
    }
    unsigned = f"{_b64({'alg': 'none'})}.{_b64(claims)}."
    response = _with_assertion(client, jwt_client, unsigned)
    assert response.status_code in (400, 401) and response.json()["error"] == "invalid_client"
    assert "access_token" not in response.json()


def test_hs256_assertions_keyed_with_the_public_key_are_refused(
    client: TestClient, runtime: Runtime, jwt_client: helpers.Registered, signing_key: ECKey
) -> None:
    # The classic confusion: HMAC keyed with the public key the server holds.
    public_pem = signing_key.as_pem(private=False)
    now = int(time.time())
    claims = {
        "iss": jwt_client.client_id,
        "sub": jwt_client.client_id,
        "aud": f"{runtime.settings.issuer}/oauth2/token",
        "exp": now + 60,
        "jti": "hs-1",
    }
    signing_input = f"{_b64({'alg': 'HS256', 'kid': 'k1'})}.{_b64(claims)}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assertion = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    response = _with_assertion(client, jwt_client, assertion)
    assert response.status_code in (400, 401) and response.json()["error"] == "invalid_client"


def test_an_assertion_signed_by_another_key_is_refused(
    client: TestClient, runtime: Runtime, jwt_client: helpers.Registered
) -> None:
    stranger = ECKey.generate_key("P-256", private=True)
    response = _with_assertion(
        client, jwt_client, _assertion(runtime, jwt_client.client_id, stranger)
    )
    assert response.status_code in (400, 401) and response.json()["error"] == "invalid_client"


def test_an_assertion_for_another_audience_is_refused(
    client: TestClient, runtime: Runtime, jwt_client: helpers.Registered, signing_key: ECKey
) -> None:
    assertion = _assertion(
        runtime, jwt_client.client_id, signing_key, aud="https://elsewhere.example/token"
    )
    response = _with_assertion(client, jwt_client, assertion)
    assert response.status_code in (400, 401) and response.json()["error"] == "invalid_client"


def test_the_token_endpoint_never_uses_starlettes_form_parser(
    client: TestClient, backend_client: helpers.Registered, monkeypatch: pytest.MonkeyPatch
) -> None:
    # request.form() measured ten times slower than parsing the body: the hot path avoids it.
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("request.form() on the token endpoint")

    monkeypatch.setattr(Request, "form", refuse)
    assert _cc(client, backend_client).status_code == 200


def test_a_clients_own_token_lifetime_applies(client: TestClient, runtime: Runtime) -> None:
    short = helpers.register(runtime, scopes="messaging.read", access_token_seconds=120)
    body = _cc(client, short).json()
    claims = jwt.decode(body["access_token"], runtime.keyring.verification_keys()).claims
    assert body["expires_in"] == 120 and claims["exp"] - claims["iat"] == 120


def test_a_cached_clients_grant_needs_no_transaction_until_the_cache_expires(
    client: TestClient,
    runtime: Runtime,
    backend_client: helpers.Registered,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _cc(client, backend_client).status_code == 200  # reads the client: a transaction
    server = client.app.state.oidc_server  # type: ignore[attr-defined]
    in_transaction: list[object] = []
    run = server.run

    async def counting_run(work: Any) -> Any:
        in_transaction.append(work)
        return await run(work)

    monkeypatch.setattr(server, "run", counting_run)
    assert _cc(client, backend_client).status_code == 200
    wrong = helpers.Registered(backend_client.client_id, "wrong", backend_client.redirect_uri)
    assert _cc(client, wrong).status_code == 401
    assert in_transaction == []  # answered on the event loop, from the cached client
    with transaction(runtime.sessions) as db:
        clients.disable(db, backend_client.client_id)
    # Within CAREBRIDGE_CLIENT_CACHE_SECONDS the cached copy answers (documented); after,
    # the registration is read again, in a transaction, and the disabled client refused.
    later = time.monotonic() + runtime.settings.client_cache_seconds + 1
    monkeypatch.setattr(server_module, "time", SimpleNamespace(monotonic=lambda: later))
    response = _cc(client, backend_client)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert len(in_transaction) == 1
