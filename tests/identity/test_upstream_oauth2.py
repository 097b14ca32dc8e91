"""Upstream sign-in with a plain OAuth 2 provider, no provider running: starting sign-ins
is throttled per client address, and a token response of the wrong shape is an
unavailable provider, not a 500."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.runtime import Runtime
from carebridge.settings import Settings, UpstreamProvider
from identity import throttle
from identity.credentials import upstream
from identity.models import UpstreamLoginState


def _audit(runtime: Runtime) -> list[tuple[str, str, str | None]]:
    with runtime.sessions() as db:
        rows = db.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all()
        return [(row.action, row.outcome, row.target) for row in rows]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # A plain OAuth 2 provider: starting a sign-in needs no request to it.
    providers = tmp_path / "providers.json"
    providers.write_text(
        json.dumps(
            [
                {
                    "name": "social",
                    "display_name": "Social",
                    "kind": "oauth2",
                    "authorize_url": "https://social.example/auth",
                    "token_url": "https://social.example/token",
                    "userinfo_url": "https://social.example/me",
                    "client_id": "carebridge",
                    "client_secret": "a-client-secret-long-enough-for-tests",
                }
            ]
        )
    )
    providers.chmod(0o600)
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, upstream_providers_file=providers
    )


def _states(runtime: Runtime) -> int:
    with runtime.sessions() as db:
        return db.scalar(select(func.count()).select_from(UpstreamLoginState)) or 0


def test_starting_upstream_sign_ins_is_throttled_per_address(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = throttle.utcnow()
    monkeypatch.setattr(throttle, "utcnow", lambda: now)  # no lock runs out meanwhile
    free = 30  # starts per address before delays (throttle.UPSTREAM_START_ADDRESS)
    for _ in range(free + 1):  # the one past the free ones still starts, and locks
        response = client.get("/signin/upstream/social", follow_redirects=False)
        assert response.status_code == 303, response.text
        assert response.headers["location"].startswith("https://social.example/auth?")
    assert _states(runtime) == free + 1

    refused = client.get("/signin/upstream/social", follow_redirects=False)
    assert refused.status_code == 429
    assert "Too many sign-ins started" in refused.text
    assert 'href="/signin"' in refused.text
    assert _states(runtime) == free + 1  # nothing stored for it
    assert ("identity.signin.upstream", "denied") in [row[:2] for row in _audit(runtime)]


@pytest.mark.parametrize(
    "token",
    [
        {"access_token": "a", "token_type": 5},
        {"access_token": "a", "token_type": "Bearer", "expires_in": [1]},
    ],
)
def test_a_token_response_of_the_wrong_shape_is_an_unavailable_provider(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, token: dict[str, object]
) -> None:
    # Unhandled, it was a 500 without the "we couldn't reach them" page or an audit record.
    provider = UpstreamProvider(
        name="odd",
        display_name="Odd",
        kind="oauth2",
        client_id="carebridge",
        client_secret=SecretStr("secret"),
        authorize_url="https://odd.example/authorize",
        token_url="https://odd.example/token",
        userinfo_url="https://odd.example/me",
    )

    def answer(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/token":
            return httpx2.Response(200, json=token)
        return httpx2.Response(200, json={"id": "1"})

    real_client = upstream._client

    def client(runtime: Runtime, provider: UpstreamProvider) -> object:
        made = real_client(runtime, provider)
        made._transport = httpx2.MockTransport(answer)
        return made

    monkeypatch.setattr(upstream, "_client", client)
    login = upstream.LoginState(
        provider="odd", nonce="n", code_verifier="v" * 43, browser="b", next="/account"
    )
    # A thread of its own: the browser tests' Playwright keeps a loop in this one.
    coroutine = upstream.finish(runtime, provider, login, code="c", iss=None)
    with ThreadPoolExecutor(1) as pool, pytest.raises(upstream.UnavailableError):
        pool.submit(asyncio.run, coroutine).result()
