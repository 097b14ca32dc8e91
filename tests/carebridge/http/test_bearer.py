"""The offline access-token check every API shares (RFC 6750 + RFC 9068)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import pytest
from joserfc import jws
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from carebridge.http import bearer
from carebridge.http.problems import http_exception_handler
from carebridge.keyring import SigningKey
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from tests.tokens import mint


async def protected(request: Request) -> Response:
    access = bearer.require(request, "messaging.read")
    return JSONResponse({"sub": access.subject, "client_only": access.is_client_only})


@pytest.fixture
def runtime(tmp_path: object) -> Iterator[Runtime]:
    settings = Settings(data_dir=tmp_path / "data", issuer="https://id.example.org")  # type: ignore[operator]
    rt = Runtime.build(settings)
    yield rt
    rt.close()


@pytest.fixture
def api(runtime: Runtime) -> TestClient:
    app = Starlette(
        routes=[Route("/api/thing", protected)],
        exception_handlers={HTTPException: http_exception_handler},
    )
    app.state.runtime = runtime
    return TestClient(app, headers={"Accept": "application/json"})


def call(api: TestClient, token: str | None) -> tuple[int, dict[str, object], str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = api.get("/api/thing", headers=headers)
    return (
        response.status_code,
        json.loads(response.text),
        response.headers.get("www-authenticate", ""),
    )


def test_a_valid_token_passes_and_names_its_subject(api: TestClient, runtime: Runtime) -> None:
    token = mint(runtime, sub="abc", client_id="app", scope="openid messaging.read")
    status, body, _ = call(api, token)
    assert (status, body) == (200, {"sub": "abc", "client_only": False})


def test_a_client_credentials_token_acts_for_the_client(api: TestClient, runtime: Runtime) -> None:
    token = mint(runtime, sub="app", client_id="app", scope="messaging.read")
    assert call(api, token)[1] == {"sub": "app", "client_only": True}


def test_no_token_gets_a_bare_challenge(api: TestClient) -> None:
    status, body, challenge = call(api, None)
    assert status == 401 and challenge == 'Bearer realm="carebridge"'
    assert body["status"] == 401


def test_a_missing_scope_is_403_insufficient_scope(api: TestClient, runtime: Runtime) -> None:
    token = mint(runtime, sub="abc", client_id="app", scope="openid messaging.write")
    status, _, challenge = call(api, token)
    assert status == 403
    assert 'error="insufficient_scope"' in challenge and 'scope="messaging.read"' in challenge


@pytest.mark.parametrize(
    "change",
    [
        {"lifetime": -120},
        {"aud": "https://other.example.org/api"},
        {"iss": "https://evil.example.org"},
        {"header": {"typ": "JWT"}},
        {"iat": int(time.time()) + 3600},
    ],
    ids=["expired", "audience", "issuer", "not-an-access-token", "issued-in-future"],
)
def test_wrong_claims_are_invalid_token(
    api: TestClient, runtime: Runtime, change: dict[str, object]
) -> None:
    token = mint(runtime, sub="abc", client_id="app", scope="messaging.read", **change)  # type: ignore[arg-type]
    status, body, challenge = call(api, token)
    assert status == 401 and 'error="invalid_token"' in challenge
    assert "abc" not in json.dumps(body)


def test_a_key_not_in_the_key_set_is_refused(api: TestClient, runtime: Runtime) -> None:
    stranger = SigningKey.generate("ES256")
    token = mint(runtime, sub="abc", client_id="app", scope="messaging.read", key=stranger)
    assert call(api, token)[0] == 401


def test_alg_none_and_hs256_with_the_public_key_are_refused(
    api: TestClient, runtime: Runtime
) -> None:
    now = int(time.time())
    claims = {
        "iss": runtime.settings.issuer,
        "aud": runtime.settings.api_audience,
        "sub": "abc",
        "client_id": "app",
        "scope": "messaging.read",
        "iat": now,
        "exp": now + 60,
        "jti": "j",
    }
    payload = json.dumps(claims).encode()
    unsigned = jws.serialize_compact(
        {"alg": "none", "typ": "at+jwt"}, payload, None, algorithms=["none"]
    )
    public_pem = runtime.keyring.active_signing_key.key.as_pem(private=False)
    # joserfc refuses to build this key confusion itself; an attacker needs no library.
    signing_input = b".".join(
        base64.urlsafe_b64encode(part).rstrip(b"=")
        for part in (json.dumps({"alg": "HS256", "typ": "at+jwt"}).encode(), payload)
    )
    mac = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    hs = (signing_input + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()
    assert call(api, unsigned)[0] == 401
    assert call(api, hs)[0] == 401


def test_garbage_and_oversized_tokens_are_refused(api: TestClient) -> None:
    assert call(api, "not.a.jwt")[0] == 401
    assert call(api, "a" * 5000)[0] == 401


# The cache of verified tokens


def test_a_verified_token_is_remembered_only_until_it_expires(
    api: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = mint(runtime, sub="abc", client_id="app", scope="messaging.read", lifetime=60)
    assert call(api, token)[0] == 200
    assert bearer.VERIFIED.get(token, runtime, time.time()) is not None
    later = time.time() + 60 + bearer.LEEWAY_SECONDS + 1
    monkeypatch.setattr(bearer.time, "time", lambda: later)
    status, _, challenge = call(api, token)
    assert status == 401 and "expired" in challenge
    assert bearer.VERIFIED.get(token, runtime, later) is None


def test_a_token_verified_by_one_runtime_is_checked_again_by_another(
    api: TestClient, runtime: Runtime, tmp_path: object
) -> None:
    token = mint(runtime, sub="abc", client_id="app", scope="messaging.read")
    assert call(api, token)[0] == 200
    # Another deployment (another key set) must not take this process's word for it.
    other = Runtime.build(
        Settings(data_dir=tmp_path / "other", issuer="https://id.example.org")  # type: ignore[operator]
    )
    try:
        api.app.state.runtime = other  # type: ignore[attr-defined]
        assert call(api, token)[0] == 401
    finally:
        other.close()


def test_the_cache_is_bounded_and_kept_per_runtime(runtime: Runtime) -> None:
    cache = bearer.VerifiedTokens(capacity=2)
    access = bearer.AccessToken("s", "c", frozenset(), "j", int(time.time()) + 60, {})
    for name in ("a", "b", "c"):
        cache.put(name, runtime, access)
    assert cache.get("a", runtime, time.time()) is None  # the oldest gave way
    assert cache.get("c", runtime, time.time()) is access
    assert cache.get("c", object(), time.time()) is None
