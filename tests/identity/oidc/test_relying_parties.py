"""Relying parties no one here wrote, against the live server on loopback:
openid-client (node, tests/peers/rp.mjs) and Authlib's own OAuth 2 client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.identity.oidc import helpers
from tests.live_server import LiveApp
from tests.realparts import require

PEERS = Path(__file__).resolve().parents[2] / "peers"


def test_openid_client_runs_the_whole_code_flow(live_app: LiveApp, tmp_path: Path) -> None:
    node = shutil.which("node")
    require("node peers", node is not None, "node is not on PATH")
    require(
        "node peers",
        (PEERS / "node_modules" / "openid-client").is_dir(),
        "tests/peers/node_modules is missing (npm ci --prefix tests/peers)",
    )
    assert node is not None
    runtime = live_app.runtime
    registered = helpers.register(
        runtime,
        scopes="openid offline_access email",
        post_logout_redirect_uris=["https://app.example.org/bye"],
    )
    someone = helpers.person(runtime, tmp_path)
    environment = {
        **os.environ,
        "RP_ISSUER": live_app.url,
        "RP_CLIENT_ID": registered.client_id,
        "RP_CLIENT_SECRET": registered.secret or "",
        "RP_REDIRECT_URI": registered.redirect_uri,
        "RP_LOGOUT_URI": "https://app.example.org/bye",
        "RP_SESSION_COOKIE": f"carebridge_session={someone.session_token}",
    }
    result = subprocess.run(
        [node, "rp.mjs"],
        cwd=PEERS,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["consent_shown"] is True
    assert seen["id_token_claims"]["iss"] == live_app.url
    assert seen["id_token_claims"]["aud"] == [registered.client_id]
    assert seen["userinfo"]["sub"] == seen["sub"]
    assert seen["refreshed"] and seen["rotated"]
    assert seen["reuse_error"] == "invalid_grant"
    assert seen["introspected_after_revocation"] == {"active": False}
    assert seen["end_session_url"].startswith(f"{live_app.url}/end-session?")
    # The end_session URL openid-client built is accepted as it is.
    with httpx.Client() as http:
        http.cookies.set("carebridge_session", someone.session_token)
        page = http.get(seen["end_session_url"])
    assert page.status_code == 200 and "Sign out of carebridge?" in page.text


def test_authlibs_client_runs_the_whole_code_flow(live_app: LiveApp, tmp_path: Path) -> None:
    runtime = live_app.runtime
    registered = helpers.register(runtime, scopes="openid offline_access messaging.read")
    someone = helpers.person(runtime, tmp_path)
    with httpx.Client(base_url=live_app.url) as http:
        metadata = http.get("/.well-known/openid-configuration").json()
        keys = KeySet.import_key_set(http.get(metadata["jwks_uri"]).json())
    verifier = helpers.pkce()[0]
    with OAuth2Client(
        registered.client_id,
        registered.secret,
        scope="openid offline_access messaging.read",
        redirect_uri=registered.redirect_uri,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",
    ) as oauth:
        url, state = oauth.create_authorization_url(
            metadata["authorization_endpoint"], code_verifier=verifier, nonce="n-0S6_WzA2Mj"
        )
        with httpx.Client() as browser:
            browser.cookies.set("carebridge_session", someone.session_token)
            page = browser.get(url)
            assert page.status_code == 200
            fields = helpers.consent_fields(page.text)
            answer = browser.post(
                metadata["authorization_endpoint"],
                data=dict([*fields, ("decision", "allow")]),
                follow_redirects=False,
            )
        location = answer.headers["location"]
        params = parse_qs(urlsplit(location).query)
        assert params["iss"] == [metadata["issuer"]] and params["state"] == [state]
        token = oauth.fetch_token(
            metadata["token_endpoint"], authorization_response=location, code_verifier=verifier
        )
        id_token = jwt.decode(token["id_token"], keys)
        assert id_token.claims["nonce"] == "n-0S6_WzA2Mj"
        assert create_s256_code_challenge(verifier) in url
        info = oauth.get(metadata["userinfo_endpoint"]).json()
        assert info["sub"] == id_token.claims["sub"]
        refreshed = oauth.refresh_token(metadata["token_endpoint"])
        assert refreshed["refresh_token"] != token["refresh_token"]
        revoked = oauth.revoke_token(
            metadata["revocation_endpoint"], refreshed["refresh_token"], "refresh_token"
        )
        assert revoked.status_code == 200
        again = httpx.post(
            metadata["token_endpoint"],
            data={"grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"]},
            auth=(registered.client_id, registered.secret or ""),
        )
        assert again.json()["error"] == "invalid_grant"
