"""Upstream (social) sign-in and account linking, against a real OpenID provider.

carebridge runs in-process (TestClient, http://testserver); the provider is oidc-provider
from npm on loopback (tests/peers/upstream.mjs). A test plays the browser: it follows
carebridge's redirect to the provider over real HTTP, lets the provider sign in whoever
``login_hint`` names, and brings the provider's redirect back to carebridge.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.settings import ConfigError, Settings, load_settings
from identity import sessions
from identity.credentials import upstream
from identity.models import (
    Account,
    AuthSession,
    PasswordCredential,
    UpstreamIdentity,
    UpstreamLoginState,
    new_id,
)
from tests.identity import account_changes, factories

CALLBACK = "http://testserver/signin/upstream/{}/callback"


# Configuration: the peer's clients, plus providers that are down or hang.


def _providers(peer: Any, closed_port: int, silent_port: int) -> list[dict[str, Any]]:
    def client(name: str) -> dict[str, str]:
        return {"client_id": peer.client_id(name), "client_secret": peer.client_secret(name)}

    return [
        {
            "name": "peer",
            "display_name": "Peer ID",
            "kind": "oidc",
            "discovery_url": peer.discovery_url,
            "scopes": ["openid", "email"],
            **client("peer"),
        },
        {
            "name": "peer-oauth",
            "display_name": "Peer Social",
            "kind": "oauth2",
            "authorize_url": f"{peer.issuer}/auth",
            "token_url": f"{peer.issuer}/token",
            "userinfo_url": f"{peer.issuer}/me",
            "subject_field": "id",
            "issuer": "https://social.example",
            "scopes": ["public_profile"],
            **client("peer-oauth"),
        },
        {
            # Sign-in works upstream, then its token endpoint is down.
            "name": "peer-broken",
            "display_name": "Peer Broken",
            "kind": "oauth2",
            "authorize_url": f"{peer.issuer}/auth",
            "token_url": f"http://127.0.0.1:{closed_port}/token",
            "userinfo_url": f"{peer.issuer}/me",
            "scopes": ["public_profile"],
            **client("peer-broken"),
        },
        {
            "name": "down",
            "display_name": "Down ID",
            "kind": "oidc",
            "discovery_url": f"http://127.0.0.1:{closed_port}/.well-known/openid-configuration",
            "client_id": "x",
            "client_secret": "y",
        },
        {
            "name": "slow",
            "display_name": "Slow ID",
            "kind": "oidc",
            "discovery_url": f"http://127.0.0.1:{silent_port}/.well-known/openid-configuration",
            "client_id": "x",
            "client_secret": "y",
            "timeout_seconds": 0.5,
        },
    ]


@pytest.fixture
def providers_file(tmp_path: Path, upstream_peer: Any, closed_port: int, silent_port: int) -> Path:
    path = tmp_path / "providers.json"
    path.write_text(json.dumps(_providers(upstream_peer, closed_port, silent_port)))
    path.chmod(0o600)
    return path


@pytest.fixture
def settings(tmp_path: Path, database_url: str, providers_file: Path) -> Settings:
    # Second factors are another module's business: here a first factor completes sign-in.
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        issuer="http://testserver",  # the callback URL the peer knows is built from it
        upstream_providers_file=providers_file,
        mfa_required=False,
    )


# Playing the browser


def through_provider(location: str, login_hint: str) -> str:
    """Follow the provider's redirects as a fresh browser would; return carebridge's URL."""
    url = httpx.URL(location).copy_merge_params({"login_hint": login_hint})
    with httpx.Client(timeout=10) as browser:
        for _ in range(10):
            response = browser.get(url)
            assert response.status_code in (302, 303), response.text
            url = url.join(response.headers["location"])
            if url.host == "testserver":
                return str(url)
    raise AssertionError("the provider never sent the browser back")


def start(client: TestClient, provider: str = "peer", **params: str) -> str:
    response = client.get(f"/signin/upstream/{provider}", params=params, follow_redirects=False)
    assert response.status_code == 303, response.text
    return str(response.headers["location"])


def sign_in(
    client: TestClient, login_hint: str, provider: str = "peer", **params: str
) -> httpx.Response:
    callback = through_provider(start(client, provider, **params), login_hint)
    return client.get(callback, follow_redirects=False)


def counts(runtime: Runtime) -> tuple[int, int]:
    with runtime.sessions() as db:
        accounts = db.scalar(select(func.count()).select_from(Account))
        links = db.scalar(select(func.count()).select_from(UpstreamIdentity))
    return accounts or 0, links or 0


def links(runtime: Runtime) -> list[UpstreamIdentity]:
    with runtime.sessions() as db:
        return list(db.scalars(select(UpstreamIdentity).order_by(UpstreamIdentity.linked_at)))


def audit_trail(runtime: Runtime) -> list[tuple[str, str, str]]:
    with runtime.sessions() as db:
        records = db.scalars(select(AuditRecord).order_by(AuditRecord.seq))
        return [(r.actor, r.action, r.outcome) for r in records]


def session_account(runtime: Runtime, client: TestClient) -> str | None:
    token = client.cookies.get("carebridge_session")
    if not token:
        return None
    with transaction(runtime.sessions) as db:
        session = sessions.load(db, runtime, token)
        return session.account_id if session else None


def new_account(runtime: Runtime, *, password: bool = False) -> str:
    account_id = new_id("acc")
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as db:
        db.add(Account(id=account_id, created_at=now, status="active"))
        db.flush()
        if password:
            db.add(PasswordCredential(account_id=account_id, hash="$argon2id$x", changed_at=now))
    return account_id


def signed_in_as(
    client: TestClient, runtime: Runtime, account_id: str, *, minutes_ago: int = 0
) -> str:
    """Give the client a complete session, authenticated (second factor included, so
    stepped up) ``minutes_ago``."""
    with transaction(runtime.sessions) as db:
        started = sessions.start(
            db,
            runtime,
            factories.lock(db, account_id),
            level=sessions.SECOND_FACTOR,
            first_factor=sessions.upstream("test"),
        )
        started.session.authenticated_at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
        started.session.stepped_up_at = started.session.authenticated_at
    client.cookies.delete("carebridge_session")
    client.cookies.set("carebridge_session", started.token, domain="testserver.local")
    return started.token


def csrf_token(client: TestClient) -> str:
    page = client.get("/account/methods")
    assert page.status_code == 200, page.text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


def link(client: TestClient, provider: str = "peer") -> httpx.Response:
    return client.post(
        "/account/methods/link",
        data={"csrf_token": csrf_token(client), "provider": provider},
        follow_redirects=False,
    )


# Signing in


def test_first_sign_in_creates_an_account_silently(
    client: TestClient, runtime: Runtime, upstream_peer: Any
) -> None:
    response = sign_in(client, "alice")
    assert response.status_code == 303
    assert response.headers["location"] == "/account"
    (identity,) = links(runtime)
    assert (identity.issuer, identity.subject, identity.provider) == (
        upstream_peer.issuer,
        "alice",
        "peer",
    )
    assert session_account(runtime, client) == identity.account_id
    actor = f"account:{identity.account_id}"
    assert (actor, "identity.signup.upstream", "allowed") in audit_trail(runtime)
    assert (actor, "identity.signin.upstream", "allowed") in audit_trail(runtime)


def test_second_sign_in_finds_the_same_account(client: TestClient, runtime: Runtime) -> None:
    sign_in(client, "alice")
    first = session_account(runtime, client)
    client.cookies.clear()
    assert sign_in(client, "alice").status_code == 303
    assert session_account(runtime, client) == first
    assert counts(runtime) == (1, 1)


def test_oauth2_provider_without_openid_signs_in_by_its_profile_id(
    client: TestClient, runtime: Runtime
) -> None:
    location = start(client, "peer-oauth")
    query = parse_qs(urlsplit(location).query)
    assert "openid" not in query["scope"][0] and "nonce" not in query
    assert query["code_challenge_method"] == ["S256"]
    response = client.get(through_provider(location, "olivia"), follow_redirects=False)
    assert response.status_code == 303
    (identity,) = links(runtime)
    assert (identity.issuer, identity.subject) == ("https://social.example", "olivia")
    assert session_account(runtime, client) == identity.account_id


def test_never_links_by_email(client: TestClient, runtime: Runtime) -> None:
    # The peer gives every subject the same verified email address.
    sign_in(client, "alice")
    alice = session_account(runtime, client)
    client.cookies.clear()
    sign_in(client, "bob")
    bob = session_account(runtime, client)
    assert alice and bob and alice != bob
    assert counts(runtime) == (2, 2)


def test_authorization_request_carries_state_nonce_and_pkce(
    client: TestClient, runtime: Runtime, upstream_peer: Any
) -> None:
    location = start(client)
    assert location.startswith(f"{upstream_peer.issuer}/auth?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert query["response_type"] == "code"
    assert query["response_mode"] == "query"
    assert query["code_challenge_method"] == "S256"
    assert query["redirect_uri"] == CALLBACK.format("peer")
    assert query["client_id"] == upstream_peer.client_id("peer")
    assert set(query["scope"].split()) == {"openid", "email"}
    assert len(query["state"]) >= 40 and len(query["nonce"]) >= 40
    assert len(query["code_challenge"]) == 43
    second = {k: v[0] for k, v in parse_qs(urlsplit(start(client)).query).items()}
    assert {second["state"], second["nonce"]}.isdisjoint({query["state"], query["nonce"]})
    with runtime.sessions() as db:
        rows = list(db.scalars(select(UpstreamLoginState)))
    # Only a keyed hash of the state is stored; nonce and verifier are encrypted.
    assert len(rows) == 2
    assert runtime.keyring.lookup_hash("upstream-state", query["state"]) in {
        row.state_hash for row in rows
    }
    for row in rows:
        assert query["state"].encode() not in row.payload
        assert query["nonce"].encode() not in row.payload


def test_return_path_is_kept_and_open_redirects_are_not(client: TestClient) -> None:
    response = sign_in(client, "alice", next="/threads/t_1?tab=unread")
    assert response.headers["location"] == "/threads/t_1?tab=unread"
    client.cookies.clear()
    response = sign_in(client, "alice", next="https://evil.example/")
    assert response.headers["location"] == "/account"


def test_sign_in_leads_to_the_second_factor_when_mfa_is_required(
    tmp_path: Path, database_url: str, providers_file: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "mfa",
        database_url=database_url,
        issuer="http://testserver",
        upstream_providers_file=providers_file,
    )
    runtime = Runtime.build(settings)
    from carebridge.app import create_app  # noqa: PLC0415

    try:
        with TestClient(create_app(runtime)) as client:
            response = sign_in(client, "alice", next="/threads")
            assert response.headers["location"] == "/mfa/enroll?next=%2Fthreads"
            with runtime.sessions() as db:
                (session,) = db.scalars(select(AuthSession))
            assert session.level == sessions.FIRST_FACTOR
    finally:
        runtime.close()


def test_signing_in_again_as_the_same_person_reauthenticates(
    client: TestClient, runtime: Runtime
) -> None:
    sign_in(client, "alice")
    account_id = session_account(runtime, client)
    assert account_id
    old_token = signed_in_as(client, runtime, account_id, minutes_ago=30)
    sign_in(client, "alice")
    new_token = client.cookies.get("carebridge_session")
    assert new_token and new_token != old_token
    with transaction(runtime.sessions) as db:
        assert sessions.load(db, runtime, old_token) is None
        session = sessions.load(db, runtime, new_token)
        assert session is not None
        assert session.level == sessions.SECOND_FACTOR  # the second factor still counts
        assert datetime.now(UTC) - session.authenticated_at < timedelta(minutes=1)


def test_disabled_account_cannot_sign_in_through_a_provider(
    client: TestClient, runtime: Runtime
) -> None:
    sign_in(client, "alice")
    with transaction(runtime.sessions) as db:
        db.execute(update(Account).values(status="disabled"))
        db.execute(AuthSession.__table__.delete())
    client.cookies.clear()
    response = sign_in(client, "alice")
    assert response.status_code == 403
    assert "disabled" in response.text
    assert session_account(runtime, client) is None


# Bad input: each refused with a clear page, nothing changed


def test_reused_state_is_refused(client: TestClient, runtime: Runtime) -> None:
    callback = through_provider(start(client), "alice")
    assert client.get(callback, follow_redirects=False).status_code == 303
    client.cookies.delete("carebridge_session")
    replay = client.get(callback, follow_redirects=False)
    assert replay.status_code == 400
    assert "expired or was already used" in replay.text
    assert "carebridge_session" not in replay.cookies
    assert counts(runtime) == (1, 1)
    assert ("anonymous", "identity.signin.upstream", "denied") in audit_trail(runtime)


def test_expired_state_is_refused(client: TestClient, runtime: Runtime) -> None:
    callback = through_provider(start(client), "alice")
    with transaction(runtime.sessions) as db:
        db.execute(
            update(UpstreamLoginState).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    response = client.get(callback, follow_redirects=False)
    assert response.status_code == 400
    assert "expired or was already used" in response.text
    assert counts(runtime) == (0, 0)


def test_state_started_in_another_browser_is_refused(client: TestClient, runtime: Runtime) -> None:
    # Login CSRF: an attacker's own callback link, opened in the victim's browser.
    callback = through_provider(start(client), "mallory")
    with TestClient(client.app) as victim:
        victim.get("/")  # the victim's browser has its own cookies
        response = victim.get(callback, follow_redirects=False)
        assert response.status_code == 400
        assert "carebridge_session" not in victim.cookies
    assert counts(runtime) == (0, 0)


def test_state_is_bound_to_its_provider(client: TestClient, runtime: Runtime) -> None:
    callback = through_provider(start(client, "peer"), "alice")
    elsewhere = callback.replace("/upstream/peer/", "/upstream/peer-oauth/")
    assert client.get(elsewhere, follow_redirects=False).status_code == 400
    # ...and the state was used up by the attempt.
    assert client.get(callback, follow_redirects=False).status_code == 400
    assert counts(runtime) == (0, 0)


@pytest.mark.parametrize("query", ["", "?code=abc", "?state=&code=abc", "?state=nope&code=abc"])
def test_callback_without_a_known_state_is_refused(
    client: TestClient, runtime: Runtime, query: str
) -> None:
    response = client.get(f"/signin/upstream/peer/callback{query}", follow_redirects=False)
    assert response.status_code == 400
    assert counts(runtime) == (0, 0)


def test_cancelled_upstream_sign_in_changes_nothing(client: TestClient, runtime: Runtime) -> None:
    response = sign_in(client, "deny")  # the peer answers access_denied
    assert response.status_code == 400
    assert "didn&#39;t finish" in response.text
    assert counts(runtime) == (0, 0)
    assert ("anonymous", "identity.signin.upstream", "failed") in audit_trail(runtime)


def test_forged_code_is_refused(client: TestClient, runtime: Runtime) -> None:
    callback = through_provider(start(client), "alice")
    forged = re.sub(r"code=[^&]+", "code=forged", callback)
    response = client.get(forged, follow_redirects=False)
    assert response.status_code == 400
    assert counts(runtime) == (0, 0)


def test_response_naming_another_issuer_is_refused(client: TestClient, runtime: Runtime) -> None:
    # RFC 9207 mix-up defence: the peer names itself in "iss"; another value is refused.
    callback = through_provider(start(client), "alice")
    assert "iss=" in callback
    mixed_up = re.sub(r"iss=[^&]+", "iss=https%3A%2F%2Fevil.example", callback)
    assert client.get(mixed_up, follow_redirects=False).status_code == 400
    assert counts(runtime) == (0, 0)


def test_upstream_down_shows_a_friendly_page_and_creates_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    response = client.get("/signin/upstream/down", follow_redirects=False)
    assert response.status_code == 502
    assert "We couldn&#39;t reach Down ID" in response.text
    assert "Nothing was changed" in response.text
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(UpstreamLoginState)) == 0
    assert counts(runtime) == (0, 0)
    assert ("anonymous", "identity.signin.upstream", "failed") in audit_trail(runtime)


def test_slow_upstream_times_out_with_a_friendly_page(client: TestClient, runtime: Runtime) -> None:
    began = time.monotonic()
    response = client.get("/signin/upstream/slow", follow_redirects=False)
    assert time.monotonic() - began < 5
    assert response.status_code == 502
    assert "didn&#39;t answer in time" in response.text
    assert counts(runtime) == (0, 0)


def test_token_endpoint_down_at_the_callback_creates_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    response = sign_in(client, "alice", provider="peer-broken")
    assert response.status_code == 502
    assert "Peer Broken" in response.text
    assert counts(runtime) == (0, 0)
    assert session_account(runtime, client) is None


def test_unknown_provider_is_not_found(client: TestClient) -> None:
    assert client.get("/signin/upstream/nobody").status_code == 404
    assert client.get("/signin/upstream/nobody/callback?state=x").status_code == 404


# ID token validation (unit level: tokens a provider, or an attacker, could send)

ISSUER, CLIENT_ID, NONCE = "https://id.example", "carebridge", "n-0123456789"


@pytest.fixture(scope="module")
def provider_key() -> ECKey:
    return ECKey.generate_key("P-256", private=True, auto_kid=True)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "nonce": NONCE,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims: dict[str, Any], key: Any, alg: str = "ES256") -> str:
    return jwt.encode({"alg": alg, "kid": key.kid}, claims, key)


def _validate(token: str, key: ECKey) -> dict[str, Any]:
    return upstream.validate_id_token(
        token, KeySet([key]), issuer=ISSUER, client_id=CLIENT_ID, nonce=NONCE
    )


def test_a_genuine_id_token_is_accepted(provider_key: ECKey) -> None:
    assert _validate(_sign(_claims(), provider_key), provider_key)["sub"] == "alice"
    several = _claims(aud=[CLIENT_ID, "other"], azp=CLIENT_ID)
    assert _validate(_sign(several, provider_key), provider_key)["sub"] == "alice"
    with_azp = _claims(azp=CLIENT_ID)
    assert _validate(_sign(with_azp, provider_key), provider_key)["sub"] == "alice"


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param(lambda: _claims(aud="someone-else"), id="wrong-audience"),
        pytest.param(lambda: _claims(aud=["other", CLIENT_ID]), id="several-audiences-no-azp"),
        pytest.param(lambda: _claims(azp="another-client"), id="one-audience-azp-not-us"),
        pytest.param(lambda: _claims(aud=None), id="no-audience"),
        pytest.param(lambda: _claims(iss="https://evil.example"), id="wrong-issuer"),
        pytest.param(lambda: _claims(iss=None), id="no-issuer"),
        pytest.param(lambda: _claims(nonce="another-round-trip"), id="wrong-nonce"),
        pytest.param(lambda: _claims(nonce=None), id="no-nonce"),
        pytest.param(lambda: _claims(exp=int(time.time()) - 3600), id="expired"),
        pytest.param(lambda: _claims(exp=None), id="no-expiry"),
        pytest.param(lambda: _claims(sub=None), id="no-subject"),
        pytest.param(lambda: _claims(sub=12345), id="numeric-subject"),
    ],
)
def test_id_token_with_bad_claims_is_refused(
    provider_key: ECKey, claims: Callable[[], dict[str, Any]]
) -> None:
    with pytest.raises(upstream.InvalidIdTokenError):
        _validate(_sign(claims(), provider_key), provider_key)


def test_id_token_signed_by_another_key_is_refused(provider_key: ECKey) -> None:
    impostor = ECKey.generate_key("P-256", private=True)
    impostor_token = jwt.encode({"alg": "ES256", "kid": provider_key.kid}, _claims(), impostor)
    with pytest.raises(upstream.InvalidIdTokenError):
        _validate(impostor_token, provider_key)


def test_id_token_with_a_tampered_payload_is_refused(provider_key: ECKey) -> None:
    header, _, signature = _sign(_claims(), provider_key).split(".")
    forged = _sign(_claims(sub="mallory"), provider_key).split(".")[1]
    with pytest.raises(upstream.InvalidIdTokenError):
        _validate(f"{header}.{forged}.{signature}", provider_key)


def test_id_token_with_symmetric_or_no_signature_is_refused(provider_key: ECKey) -> None:
    # HS256 keyed with something public, and alg "none": never accepted.
    secret = OctKey.import_key("our-client-secret-is-known-to-the-provider")
    with pytest.raises(upstream.InvalidIdTokenError):
        upstream.validate_id_token(
            jwt.encode({"alg": "HS256"}, _claims(), secret),
            KeySet([secret]),
            issuer=ISSUER,
            client_id=CLIENT_ID,
            nonce=NONCE,
        )
    header = jwt.encode({"alg": "ES256"}, _claims(), provider_key).split(".")[1]
    unsigned = f"eyJhbGciOiJub25lIn0.{header}."
    with pytest.raises(upstream.InvalidIdTokenError):
        _validate(unsigned, provider_key)


def test_id_token_from_an_rsa_provider_is_accepted() -> None:
    key = RSAKey.generate_key(2048, private=True, auto_kid=True)
    token = jwt.encode({"alg": "RS256", "kid": key.kid}, _claims(), key)
    claims = upstream.validate_id_token(
        token, KeySet([key]), issuer=ISSUER, client_id=CLIENT_ID, nonce=NONCE
    )
    assert claims["sub"] == "alice"


# Linking


def test_linking_requires_a_signed_in_account(client: TestClient, runtime: Runtime) -> None:
    response = client.post(
        "/account/methods/link", data={"provider": "peer"}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"].startswith("/signin?next=")
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(UpstreamLoginState)) == 0


def test_linking_requires_a_step_up(client: TestClient, runtime: Runtime) -> None:
    account_id = new_account(runtime, password=True)
    signed_in_as(client, runtime, account_id, minutes_ago=10)
    response = link(client)
    # No second factor to prove: set one up first, then back to linking.
    assert response.status_code == 303
    assert response.headers["location"] == "/mfa/enroll?next=%2Faccount%2Fmethods"
    with runtime.sessions() as db:
        assert db.scalar(select(func.count()).select_from(UpstreamLoginState)) == 0


def test_linking_adds_the_provider_to_the_signed_in_account(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = new_account(runtime, password=True)
    signed_in_as(client, runtime, account_id)
    response = link(client)
    assert response.status_code == 303
    callback = through_provider(response.headers["location"], "alice")
    done = client.get(callback, follow_redirects=False)
    assert done.status_code == 303
    assert done.headers["location"] == "/account/methods?done=linked"
    (identity,) = links(runtime)
    assert identity.account_id == account_id
    assert (f"account:{account_id}", "identity.upstream.link", "allowed") in audit_trail(runtime)
    page = client.get(done.headers["location"])
    assert "The account is linked" in page.text and "<td>Peer ID</td>" in page.text
    # From now on the provider signs in to that account.
    client.cookies.clear()
    sign_in(client, "alice")
    assert session_account(runtime, client) == account_id
    assert counts(runtime) == (1, 1)


def test_linking_is_announced_to_a_verified_address(client: TestClient, runtime: Runtime) -> None:
    pat = account_changes.patient(runtime)
    signed_in_as(client, runtime, pat.account_id)
    callback = through_provider(link(client).headers["location"], "alice")
    assert client.get(callback, follow_redirects=False).status_code == 303
    (notice,) = account_changes.emails_to(runtime, pat.login)
    assert notice["subject"] == "A new way to sign in was linked to your account"
    assert "alice" not in notice["text"]  # the provider's account is not named


def test_provider_linked_to_another_account_is_refused(
    client: TestClient, runtime: Runtime
) -> None:
    sign_in(client, "alice")
    owner = session_account(runtime, client)
    other = new_account(runtime, password=True)
    signed_in_as(client, runtime, other)
    callback = through_provider(link(client).headers["location"], "alice")
    response = client.get(callback, follow_redirects=False)
    assert response.status_code == 409
    assert "belongs to another carebridge account" in response.text
    assert 'href="/account/methods"' in response.text  # "start again" goes back to linking
    (identity,) = links(runtime)
    assert identity.account_id == owner
    assert session_account(runtime, client) == other
    assert (f"account:{other}", "identity.upstream.link", "denied") in audit_trail(runtime)


def test_link_finishing_in_another_accounts_session_is_refused(
    client: TestClient, runtime: Runtime
) -> None:
    first = new_account(runtime, password=True)
    signed_in_as(client, runtime, first)
    location = link(client).headers["location"]
    second = new_account(runtime, password=True)
    signed_in_as(client, runtime, second)  # someone else signs in in this browser meanwhile
    response = client.get(through_provider(location, "alice"), follow_redirects=False)
    assert response.status_code == 403
    assert links(runtime) == []


# Listing and unlinking


def _link_directly(runtime: Runtime, account_id: str, subject: str) -> str:
    link_id = new_id("upi")
    with transaction(runtime.sessions) as db:
        db.add(
            UpstreamIdentity(
                id=link_id,
                account_id=account_id,
                provider="peer",
                issuer="https://id.example",
                subject=subject,
                linked_at=datetime.now(UTC),
            )
        )
    return link_id


def _unlink(client: TestClient, link_id: str) -> httpx.Response:
    return client.post(
        "/account/methods/unlink",
        data={"csrf_token": csrf_token(client), "id": link_id},
        follow_redirects=False,
    )


def test_methods_page_requires_a_complete_sign_in(client: TestClient) -> None:
    response = client.get("/account/methods", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=%2Faccount%2Fmethods"
    assert client.get("/api/v1/account/methods").status_code == 401


def test_unlinking_the_last_way_to_sign_in_is_refused(client: TestClient, runtime: Runtime) -> None:
    sign_in(client, "alice")  # no password, one provider
    (identity,) = links(runtime)
    page = client.get("/account/methods")
    assert "only way to sign in" in page.text
    assert 'action="/account/methods/unlink"' not in page.text
    response = _unlink(client, identity.id)
    assert response.status_code == 409
    token = client.cookies.get("carebridge_session")
    api = client.delete(
        f"/api/v1/account/methods/{identity.id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert api.status_code == 409
    assert links(runtime) != []
    actor = f"account:{identity.account_id}"
    assert (actor, "identity.upstream.unlink", "denied") in audit_trail(runtime)


def test_unlinking_removes_one_of_several_ways(client: TestClient, runtime: Runtime) -> None:
    account_id = new_account(runtime, password=True)
    link_id = _link_directly(runtime, account_id, "alice")
    signed_in_as(client, runtime, account_id)
    response = _unlink(client, link_id)
    assert response.status_code == 303
    assert response.headers["location"] == "/account/methods?done=unlinked"
    assert links(runtime) == []
    assert (f"account:{account_id}", "identity.upstream.unlink", "allowed") in audit_trail(runtime)


def test_unlinking_needs_a_recent_sign_in(client: TestClient, runtime: Runtime) -> None:
    account_id = new_account(runtime, password=True)
    link_id = _link_directly(runtime, account_id, "alice")
    token = signed_in_as(client, runtime, account_id, minutes_ago=10)
    assert _unlink(client, link_id).status_code == 303  # on to step up, then back
    api = client.delete(
        f"/api/v1/account/methods/{link_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert api.status_code == 403
    assert api.json()["step_up"] == "enrol"
    assert len(links(runtime)) == 1
    assert (f"account:{account_id}", "identity.upstream.unlink", "denied") in audit_trail(runtime)


def test_unlinking_another_accounts_link_is_not_found(client: TestClient, runtime: Runtime) -> None:
    victim = new_account(runtime, password=True)
    victim_link = _link_directly(runtime, victim, "victim")
    attacker = new_account(runtime, password=True)
    _link_directly(runtime, attacker, "attacker")
    token = signed_in_as(client, runtime, attacker)
    assert _unlink(client, victim_link).status_code == 404
    api = client.delete(
        f"/api/v1/account/methods/{victim_link}", headers={"Authorization": f"Bearer {token}"}
    )
    assert api.status_code == 404
    assert api.headers["content-type"] == "application/problem+json"
    assert len(links(runtime)) == 2


def test_unlinking_from_another_site_is_refused(client: TestClient, runtime: Runtime) -> None:
    account_id = new_account(runtime, password=True)
    link_id = _link_directly(runtime, account_id, "alice")
    signed_in_as(client, runtime, account_id)
    client.get("/account/methods")
    response = client.post("/account/methods/unlink", data={"id": link_id}, follow_redirects=False)
    assert response.status_code == 403
    assert len(links(runtime)) == 1


def test_methods_api_lists_the_password_and_linked_providers(
    client: TestClient, runtime: Runtime
) -> None:
    account_id = new_account(runtime, password=True)
    link_id = _link_directly(runtime, account_id, "alice")
    _link_directly(runtime, new_account(runtime), "someone-else")
    token = signed_in_as(client, runtime, account_id)
    client.cookies.clear()
    body = client.get(
        "/api/v1/account/methods", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert body["password"] is True
    assert [(m["id"], m["provider"], m["display_name"]) for m in body["upstream"]] == [
        (link_id, "peer", "Peer ID")
    ]
    assert (
        client.delete(
            f"/api/v1/account/methods/{link_id}", headers={"Authorization": f"Bearer {token}"}
        ).status_code
        == 204
    )
    assert client.get(
        "/api/v1/account/methods", headers={"Authorization": f"Bearer {token}"}
    ).json() == {"password": True, "upstream": []}


def test_api_is_described_in_the_openapi_document(client: TestClient) -> None:
    document = client.get("/api/openapi.json").json()
    assert "get" in document["paths"]["/api/v1/account/methods"]
    assert "delete" in document["paths"]["/api/v1/account/methods/{id}"]
    assert "SignInMethods" in document["components"]["schemas"]


# Configuration


def test_sign_in_buttons_list_the_configured_providers(runtime: Runtime) -> None:
    from identity.flows.upstream import buttons  # noqa: PLC0415

    found = buttons(runtime, "/threads")
    assert found[0] == {
        "name": "peer",
        "label": "Sign in with Peer ID",
        "url": "/signin/upstream/peer?next=%2Fthreads",
    }
    assert [b["name"] for b in found] == ["peer", "peer-oauth", "peer-broken", "down", "slow"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[", "is not a JSON document"),
        ('{"name": "x"}', "the document: Input should be a valid list"),
        (
            '[{"name": "x", "display_name": "X", "kind": "oidc", "client_id": "a", '
            '"client_secret": "b"}]',
            "entry 0: an oidc provider needs discovery_url",
        ),
        (
            '[{"name": "x", "display_name": "X", "kind": "oidc", "client_id": "a", '
            '"client_secret": "b", "discovery_url": "http://id.example/.well-known/x"}]',
            "entry 0, discovery_url: must be an https:// URL",
        ),
        (
            '[{"name": "x", "display_name": "X", "kind": "oauth2", "client_id": "a", '
            '"client_secret": "b", "authorize_url": "https://a.example/auth"}]',
            "needs authorize_url, token_url and userinfo_url",
        ),
        (
            '[{"name": "X Y", "display_name": "X", "kind": "saml", "client_id": "a", '
            '"client_secret": "b"}]',
            "entry 0, name:",
        ),
    ],
)
def test_a_bad_providers_file_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, problem: str
) -> None:
    path = tmp_path / "providers.json"
    path.write_text(content)
    monkeypatch.setenv("CAREBRIDGE_UPSTREAM_PROVIDERS_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"CAREBRIDGE_UPSTREAM_PROVIDERS_FILE {path}")
    assert problem in message
    assert "\n" not in message


def test_a_providers_file_never_echoes_the_client_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "providers.json"
    entry = {
        "name": "x",
        "display_name": "X",
        "kind": "oidc",
        "client_id": "a",
        "client_secret": "hunter2-very-secret",
        "discovery_url": "ftp://x",
    }
    path.write_text(json.dumps([entry, entry]))
    monkeypatch.setenv("CAREBRIDGE_UPSTREAM_PROVIDERS_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)
    entry["discovery_url"] = "https://x.example/.well-known/openid-configuration"
    path.write_text(json.dumps([entry, entry]))
    with pytest.raises(ConfigError, match="names must be unique"):
        load_settings()
    path.write_text(json.dumps([entry]))
    (provider,) = load_settings().upstream_providers
    assert "hunter2" not in repr(provider)
    assert provider.request_scopes == ["openid"]
