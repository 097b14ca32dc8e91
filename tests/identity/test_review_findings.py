"""Attacks found in the second security review of the patient-accounts code."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pyotp
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from carebridge.runtime import Runtime
from carebridge.settings import UpstreamProvider
from identity.credentials import upstream
from identity.models import TotpCredential
from tests.identity import factories


def test_api_never_acts_on_the_session_cookie(client: TestClient, runtime: Runtime) -> None:
    # A browser signed in to the pages holds the session cookie. The JSON API authenticates
    # by bearer token only: a form another page on the same site posts to an API endpoint
    # without a body (no JSON content type to stop it) must not act on that cookie.
    account_id = factories.account(runtime)
    factories.sign_in(client, runtime, account_id, level=1)
    assert client.get("/mfa/enroll").status_code == 200  # the cookie works for pages

    with runtime.sessions() as db:
        before = db.get(TotpCredential, account_id)
        assert before is not None
        seed = before.secret_encrypted

    forged = client.post(
        "/api/v1/mfa/totp/enroll",
        content=b"x=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert forged.status_code == 401
    assert client.get("/api/v1/sessions").status_code == 401
    with runtime.sessions() as db:
        after = db.get(TotpCredential, account_id)
        assert after is not None and after.secret_encrypted == seed  # not restarted


def _enrolment_secret(client: TestClient) -> str:
    page = client.get("/mfa/enroll")
    assert page.status_code == 200
    match = re.search(r'<code class="secret" id="secret">([A-Z2-7 ]+)</code>', page.text)
    assert match, "no secret on the enrolment page"
    return match.group(1).replace(" ", "")


def test_a_seed_being_enrolled_is_shown_only_to_the_session_that_made_it(
    client: TestClient, runtime: Runtime
) -> None:
    # Someone who learnt the password signs in (level 1) while the owner is enrolling: had
    # they seen the owner's seed, the owner's confirming it would hand them the second factor.
    account_id = factories.account(runtime)
    owner = factories.sign_in(client, runtime, account_id)
    owners_seed = _enrolment_secret(client)
    assert _enrolment_secret(client) == owners_seed  # a reload keeps it for its own session

    intruder = factories.sign_in(client, runtime, account_id)
    intruders_seed = _enrolment_secret(client)
    assert intruders_seed != owners_seed

    # Nor is the seed the intruder's session made ever the one the owner confirms.
    factories.use_token(client, runtime, owner)
    confirmed_seed = _enrolment_secret(client)
    assert confirmed_seed not in (owners_seed, intruders_seed)
    page = client.get("/mfa/enroll")
    response = client.post(
        "/mfa/enroll",
        data={"csrf_token": factories.csrf(page.text), "code": pyotp.TOTP(confirmed_seed).now()},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    factories.use_token(client, runtime, intruder)
    assert client.get("/mfa/enroll", follow_redirects=False).status_code == 303  # challenge now


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
