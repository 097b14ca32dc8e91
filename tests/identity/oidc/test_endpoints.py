"""Metadata, userinfo, revocation, introspection and RP-initiated logout."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from joserfc import jwt
from starlette.testclient import TestClient

from carebridge.db import transaction
from carebridge.keyring import Keyring
from carebridge.runtime import Runtime
from identity import accounts
from tests import tokens as minting
from tests.identity import factories
from tests.identity.oidc import helpers


@pytest.fixture
def registered(runtime: Runtime) -> helpers.Registered:
    return helpers.register(
        runtime,
        scopes="openid offline_access email fhirUser messaging.read",
        post_logout_redirect_uris=["https://app.example.org/bye"],
    )


@pytest.fixture
def someone(client: TestClient, runtime: Runtime, tmp_path: Path) -> helpers.Person:
    signed_in = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, signed_in.session_token)
    return signed_in


def _tokens(
    client: TestClient, registered: helpers.Registered, scope: str = "openid offline_access"
) -> dict[str, Any]:
    verifier, challenge = helpers.pkce()
    answer = helpers.approve(
        client, helpers.authorization_params(registered, challenge, scope=scope)
    )
    response = helpers.exchange(client, registered, answer["code"][0], verifier)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize(
    "path",
    [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
        "/.well-known/smart-configuration",
    ],
)
def test_metadata_names_the_configured_issuer_not_the_host(
    client: TestClient, runtime: Runtime, path: str
) -> None:
    document = client.get(path, headers={"Host": "localhost"}).json()
    issuer = runtime.settings.issuer
    assert document["issuer"] == issuer
    assert document["token_endpoint"] == f"{issuer}/oauth2/token"
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["response_types_supported"] == ["code"]
    assert "implicit" not in document["grant_types_supported"]
    assert "password" not in document["grant_types_supported"]


def test_openid_configuration_lists_what_clients_need(client: TestClient) -> None:
    document = client.get("/.well-known/openid-configuration").json()
    assert document["authorization_response_iss_parameter_supported"] is True
    assert document["id_token_signing_alg_values_supported"] == ["ES256"]
    assert "pairwise" in document["subject_types_supported"]
    for key in (
        "userinfo_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
        "end_session_endpoint",
        "jwks_uri",
    ):
        assert document[key].startswith("http://127.0.0.1:8000/")
    assert "private_key_jwt" in document["token_endpoint_auth_methods_supported"]
    smart = client.get("/.well-known/smart-configuration").json()
    assert "launch-standalone" in smart["capabilities"]


def test_userinfo_releases_only_granted_claims(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    narrow = _tokens(client, registered)
    info = client.get(
        "/oauth2/userinfo", headers={"Authorization": f"Bearer {narrow['access_token']}"}
    )
    assert info.status_code == 200, info.text
    assert set(info.json()) == {"sub"}
    wide = _tokens(client, registered, scope="openid fhirUser")
    info = client.get(
        "/oauth2/userinfo", headers={"Authorization": f"Bearer {wide['access_token']}"}
    ).json()
    assert info["fhirUser"].startswith("Patient/") and info["sub"] == narrow_sub(runtime, narrow)


def test_email_claim_says_it_is_not_verified(client: TestClient, runtime: Runtime) -> None:
    # No address is verified anywhere yet: a relying party that trusts an email for
    # account linking must be told so, in the ID token and at userinfo alike.
    registered = helpers.register(runtime, scopes="openid email")
    with transaction(runtime.sessions) as db:
        account_id = accounts.create(
            db, runtime.keyring, login="pat@example.org", password_hash="$argon2id$x"
        )
    factories.totp(runtime, account_id)
    helpers.use_session(client, runtime, factories.session(runtime, account_id, level=2))
    body = _tokens(client, registered, scope="openid email")
    id_token = jwt.decode(body["id_token"], runtime.keyring.verification_keys()).claims
    info = client.get(
        "/oauth2/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    for claims in (id_token, info.json()):
        assert claims["email"] == "pat@example.org"
        assert claims["email_verified"] is False
    metadata = client.get("/.well-known/openid-configuration").json()
    assert "email_verified" in metadata["claims_supported"]


def narrow_sub(runtime: Runtime, body: dict[str, Any]) -> str:
    sub: str = jwt.decode(body["access_token"], runtime.keyring.verification_keys()).claims["sub"]
    return sub


def test_userinfo_refuses_tokens_without_openid_or_from_nowhere(
    client: TestClient, runtime: Runtime, registered: helpers.Registered
) -> None:
    assert client.get("/oauth2/userinfo").status_code == 401
    service = minting.mint(
        runtime, sub=registered.client_id, client_id=registered.client_id, scope="messaging.read"
    )
    response = client.get("/oauth2/userinfo", headers={"Authorization": f"Bearer {service}"})
    assert response.status_code == 403
    stranger = minting.mint(runtime, sub="nobody", client_id=registered.client_id, scope="openid")
    response = client.get("/oauth2/userinfo", headers={"Authorization": f"Bearer {stranger}"})
    assert response.status_code == 401
    assert "invalid_token" in response.headers["www-authenticate"]


def test_tokens_signed_by_a_removed_key_are_refused(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    body = _tokens(client, registered)
    # Rotate, then drop the old key, as an operator retiring a compromised key would.
    rotated = runtime.keyring.rotated()
    runtime._keyring = Keyring(
        rotated.keks, rotated.signing[-1:], rotated._pepper, development=True
    )
    info = client.get(
        "/oauth2/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert info.status_code == 401
    introspected = client.post(
        "/oauth2/introspect", data={"token": body["access_token"]}, auth=helpers.basic(registered)
    )
    assert introspected.json() == {"active": False}
    # And a fresh flow signs with the new key only.
    fresh = _tokens(client, registered)
    header = jwt.decode(fresh["access_token"], runtime.keyring.verification_keys()).header
    assert header["kid"] == runtime.keyring.active_signing_key.kid


def test_revoking_a_refresh_token_ends_its_family(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    body = _tokens(client, registered)
    response = client.post(
        "/oauth2/revoke",
        data={"token": body["refresh_token"], "token_type_hint": "refresh_token"},
        auth=helpers.basic(registered),
    )
    assert response.status_code == 200
    refreshed = client.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        auth=helpers.basic(registered),
    )
    assert refreshed.json()["error"] == "invalid_grant"
    # Unknown tokens are "revoked" too (RFC 7009 §2.2): no oracle.
    unknown = client.post("/oauth2/revoke", data={"token": "nope"}, auth=helpers.basic(registered))
    assert unknown.status_code == 200


def test_revoking_an_access_token_shows_in_introspection_and_userinfo(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    body = _tokens(client, registered)
    active = client.post(
        "/oauth2/introspect", data={"token": body["access_token"]}, auth=helpers.basic(registered)
    ).json()
    assert active["active"] is True and active["client_id"] == registered.client_id
    assert active["scope"] == "openid offline_access"
    client.post(
        "/oauth2/revoke", data={"token": body["access_token"]}, auth=helpers.basic(registered)
    )
    inactive = client.post(
        "/oauth2/introspect", data={"token": body["access_token"]}, auth=helpers.basic(registered)
    ).json()
    assert inactive == {"active": False}
    info = client.get(
        "/oauth2/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert info.status_code == 401


def test_introspection_is_for_confidential_clients_and_their_own_tokens(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    body = _tokens(client, registered)
    other = helpers.register(runtime, name="Other")
    theirs = client.post(
        "/oauth2/introspect", data={"token": body["refresh_token"]}, auth=helpers.basic(other)
    ).json()
    assert theirs == {"active": False}
    public = helpers.register(runtime, client_type="public", name="Public")
    response = client.post(
        "/oauth2/introspect", data={"token": body["refresh_token"], "client_id": public.client_id}
    )
    assert response.status_code in (400, 401) and response.json()["error"] == "invalid_client"


# RP-initiated logout


def test_logout_with_a_registered_uri_signs_out_and_returns_with_state(
    client: TestClient, runtime: Runtime, registered: helpers.Registered, someone: helpers.Person
) -> None:
    body = _tokens(client, registered)
    params = {
        "id_token_hint": body["id_token"],
        "post_logout_redirect_uri": "https://app.example.org/bye",
        "state": "s-1",
    }
    page = client.get(f"/end-session?{urlencode(params)}")
    assert page.status_code == 200 and "Sign out of carebridge?" in page.text
    fields = helpers.consent_fields(page.text)
    response = client.post(
        "/end-session",
        content=urlencode(fields),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "https://app.example.org/bye?state=s-1"
    assert client.get("/account", follow_redirects=False).headers["location"].startswith("/signin")


@pytest.mark.parametrize(
    "uri",
    [
        "https://evil.example/bye",
        "https://app.example.org/bye/",
        "https://app.example.org/callback",
    ],
)
def test_logout_to_an_unregistered_uri_gets_an_error_page(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person, uri: str
) -> None:
    body = _tokens(client, registered)
    params = {"id_token_hint": body["id_token"], "post_logout_redirect_uri": uri}
    response = client.get(f"/end-session?{urlencode(params)}", follow_redirects=False)
    assert response.status_code == 400 and "location" not in response.headers


def test_logout_redirect_needs_a_client(
    client: TestClient, registered: helpers.Registered, someone: helpers.Person
) -> None:
    params = {"post_logout_redirect_uri": "https://app.example.org/bye", "id_token_hint": "junk"}
    response = client.get(f"/end-session?{urlencode(params)}", follow_redirects=False)
    assert response.status_code == 400
