"""Crafted requests at the provider's endpoints (issue 17, findings 4 and 5): a NUL, a
control character or a lone surrogate in a client_id, a state or a nonce is a 400 in the
endpoint's own shape, never a 500 with a traceback; an assertion naming a client without
public keys is invalid_client, as one naming an unknown client; an unsupported response
mode is refused."""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from joserfc import jws
from joserfc.jwk import ECKey
from starlette.testclient import TestClient

from carebridge.runtime import Runtime
from tests.identity import factories
from tests.identity.oidc import helpers
from tests.logcapture import captured_log

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MARK = "crafted7q"  # in every crafted value: the log must never show it


def _clean(log: str) -> None:
    assert "Traceback" not in log
    assert MARK not in log


def _oauth_invalid_request(response: Any) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert response.headers["cache-control"] == "no-store"


def _page_400(response: Any) -> None:
    assert response.status_code == 400, response.text[:300]
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert MARK not in response.text


# The authorization endpoint: an error page, never a redirect carrying the value


def test_nul_in_client_id_at_authorize_is_400_not_500(client: TestClient, runtime: Runtime) -> None:
    registered = helpers.register(runtime)
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, client_id=f"{MARK}\x00")
    with captured_log() as log:
        response = client.get(f"/authorize?{urlencode(params)}", follow_redirects=False)
    _page_400(response)
    _clean(log.getvalue())


@pytest.mark.parametrize("name", ["state", "nonce"])
def test_nul_in_state_or_nonce_at_authorize_is_400_not_500(
    client: TestClient, runtime: Runtime, tmp_path: Path, name: str
) -> None:
    # Signed in, with a remembered grant: the request goes as far as it can (a code row).
    registered = helpers.register(runtime, first_party=True)
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, **{name: f"{MARK}\x00"})
    with captured_log() as log:
        response = client.get(f"/authorize?{urlencode(params)}", follow_redirects=False)
    _page_400(response)
    _clean(log.getvalue())


@pytest.mark.parametrize("value", ["\x1b[2J", "\x85", "a\nb", "\x7f"])
def test_control_characters_in_state_are_refused_not_passed_back(
    client: TestClient, runtime: Runtime, tmp_path: Path, value: str
) -> None:
    registered = helpers.register(runtime, first_party=True)
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, state=MARK + value)
    response = client.get(f"/authorize?{urlencode(params)}", follow_redirects=False)
    _page_400(response)


def test_nul_in_the_consent_form_is_400_not_500(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    registered = helpers.register(runtime)
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge)
    page = client.get(f"/authorize?{urlencode(params)}")
    fields = [
        (name, f"{MARK}\x00" if name == "nonce" else value)
        for name, value in helpers.consent_fields(page.text)
    ]
    with captured_log() as log:
        response = client.post(
            "/authorize",
            content=urlencode([*fields, ("decision", "allow")]),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )
    _page_400(response)
    _clean(log.getvalue())


# RP-initiated logout


def test_nul_in_client_id_at_end_session_is_400_not_500(
    client: TestClient, runtime: Runtime
) -> None:
    query = urlencode(
        {"client_id": f"{MARK}\x00", "post_logout_redirect_uri": "https://app.example.org/out"}
    )
    with captured_log() as log:
        response = client.get(f"/end-session?{query}", follow_redirects=False)
    _page_400(response)
    _clean(log.getvalue())


# The token, revocation and introspection endpoints: {"error": "invalid_request"}


def _basic(client_id: str, secret: str) -> dict[str, str]:
    # Form-urlencoded, then base64 (RFC 6749 §2.3.1), as a client library sends it.
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": f"Basic {base64.b64encode(raw).decode()}"}


@pytest.mark.parametrize(
    "authentication",
    ["client_secret_basic", "client_secret_basic_escaped", "client_secret_post", "none"],
)
def test_nul_in_client_id_at_token_endpoint_is_400_not_500(
    client: TestClient, authentication: str
) -> None:
    crafted = f"{MARK}\x00"
    data = {"grant_type": "authorization_code", "code": "x", "code_verifier": "y" * 43}
    headers: dict[str, str] = {}
    if authentication == "client_secret_basic":
        headers = _basic(crafted, "secret")
    elif authentication == "client_secret_basic_escaped":
        headers = _basic(f"{MARK}%00", "secret")  # Authlib form-decodes the credentials
    elif authentication == "client_secret_post":
        data |= {"client_id": crafted, "client_secret": "secret"}
    else:
        data |= {"client_id": crafted, "redirect_uri": helpers.REDIRECT}
    with captured_log() as log:
        response = client.post("/oauth2/token", data=data, headers=headers)
    _oauth_invalid_request(response)
    _clean(log.getvalue())


def test_basic_credentials_that_are_not_utf8_are_400_not_500(client: TestClient) -> None:
    raw = base64.b64encode(b"\xff\xfe:secret").decode()
    response = client.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {raw}"},
    )
    _oauth_invalid_request(response)


def test_basic_credentials_not_in_utf8_do_not_break_the_authorization_page(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    # A browser behind a Basic-auth proxy forwards the proxy's credentials, in Latin-1 by
    # an older browser: /authorize authenticates no client, so it does not decode them.
    registered = helpers.register(runtime, first_party=True)
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge)
    latin1 = base64.b64encode("José:pw".encode("latin-1")).decode()
    client.headers["Authorization"] = f"Basic {latin1}"
    answer = helpers.approve(client, params)
    assert "code" in answer and answer["state"] == [params["state"]]


@pytest.mark.parametrize("path", ["/oauth2/revoke", "/oauth2/introspect"])
def test_nul_in_client_id_at_revoke_and_introspect_is_400_not_500(
    client: TestClient, path: str
) -> None:
    with captured_log() as log:
        response = client.post(path, data={"token": "x", "client_id": f"{MARK}\x00"})
        basic = client.post(path, data={"token": "x"}, headers=_basic(f"{MARK}\x00", "s"))
    _oauth_invalid_request(response)
    _oauth_invalid_request(basic)
    _clean(log.getvalue())


# Connected apps on the account page


def test_nul_in_client_id_at_connected_apps_revoke_is_400_not_500(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    page = client.get("/account")
    with captured_log() as log:
        response = client.post(
            "/account/apps/revoke",
            content=urlencode(
                {"csrf_token": factories.csrf(page.text), "client_id": f"{MARK}\x00"}
            ),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )
    _page_400(response)
    _clean(log.getvalue())


# private_key_jwt (RFC 7523): one answer for every assertion that does not authenticate


@pytest.fixture
def signing_key() -> ECKey:
    return ECKey.generate_key("P-256", private=True)


def _assertion(runtime: Runtime, client_id: str, key: ECKey) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": f"{runtime.settings.issuer}/oauth2/token",
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(12),
    }
    # JSON escapes, as an attacker writes them: "\ud800" is valid JSON, not valid UTF-8.
    payload = json.dumps(claims).encode()
    return jws.serialize_compact({"alg": "ES256", "kid": "k1"}, payload, key, algorithms=["ES256"])


def _with_assertion(client: TestClient, assertion: str) -> Any:
    return client.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )


@pytest.mark.parametrize("client_type", ["confidential", "public"])
def test_client_assertion_for_secret_client_is_invalid_client(
    client: TestClient, runtime: Runtime, signing_key: ECKey, client_type: str
) -> None:
    # A client registered with a secret (or none, a public client) has no public keys.
    registered = helpers.register(runtime, client_type=client_type, scopes="openid")
    with captured_log() as log:
        response = _with_assertion(client, _assertion(runtime, registered.client_id, signing_key))
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] == "invalid_client"
    assert "Traceback" not in log.getvalue()


def test_client_assertion_unknown_and_known_clients_answer_alike(
    client: TestClient, runtime: Runtime, signing_key: ECKey
) -> None:
    public = {"keys": [{**signing_key.as_dict(private=False), "kid": "k1"}]}
    jwt_client = helpers.register(
        runtime, scopes="messaging.read", auth_method="private_key_jwt", jwks=public
    )
    secret_client = helpers.register(runtime, scopes="messaging.read")
    stranger = ECKey.generate_key("P-256", private=True)
    answers = [
        _with_assertion(client, _assertion(runtime, client_id, stranger))
        for client_id in ("cli_nobodyhasthisid00", jwt_client.client_id, secret_client.client_id)
    ]
    assert {(a.status_code, a.text) for a in answers} == {
        (400, '{"error":"invalid_client","error_description":"The assertion is not valid."}')
    }
    # The client's own key still authenticates it.
    good = _with_assertion(client, _assertion(runtime, jwt_client.client_id, signing_key))
    assert good.status_code == 200, good.text


@pytest.mark.parametrize("subject", [f"{MARK}\x00", f"{MARK}\ud800"])
def test_nul_or_lone_surrogate_in_assertion_subject_is_invalid_client_not_500(
    client: TestClient, runtime: Runtime, signing_key: ECKey, subject: str
) -> None:
    # Inside a JWT the boundary cannot look: the client lookup refuses what is not text.
    with captured_log() as log:
        response = _with_assertion(client, _assertion(runtime, subject, signing_key))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_client"
    _clean(log.getvalue())


# Response modes


@pytest.mark.parametrize("mode", ["fragment", "form_post", "query.jwt", "nonsense"])
def test_unsupported_response_mode_refused(
    client: TestClient, runtime: Runtime, tmp_path: Path, mode: str
) -> None:
    registered = helpers.register(runtime, first_party=True)
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, response_mode=mode)
    response = client.get(f"/authorize?{urlencode(params)}", follow_redirects=False)
    assert response.status_code == 303, response.text[:300]
    location = urlsplit(response.headers["location"])
    # Back to the client in the query (the one mode supported), never in a fragment.
    assert f"{location.scheme}://{location.netloc}{location.path}" == registered.redirect_uri
    assert not location.fragment
    answer = parse_qs(location.query)
    assert answer["error"] == ["invalid_request"]
    assert answer["state"] == [params["state"]]
    assert answer["iss"] == [runtime.settings.issuer]
    assert "code" not in answer


def test_an_empty_response_mode_is_treated_as_absent(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    # A parameter sent without a value is treated as omitted (OpenID Connect Core
    # §3.1.2.1 for optional parameters; OAuth practice): the default, query, applies.
    registered = helpers.register(runtime, first_party=True)
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, response_mode="")
    answer = helpers.approve(client, params)
    assert "code" in answer and answer["state"] == [params["state"]]


def test_query_response_mode_is_accepted_and_the_only_one_advertised(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    registered = helpers.register(runtime, first_party=True)
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    _, challenge = helpers.pkce()
    params = helpers.authorization_params(registered, challenge, response_mode="query")
    answer = helpers.approve(client, params)
    assert "code" in answer and answer["state"] == [params["state"]]
    for document in ("openid-configuration", "oauth-authorization-server"):
        metadata = client.get(f"/.well-known/{document}").json()
        assert metadata["response_modes_supported"] == ["query"]
