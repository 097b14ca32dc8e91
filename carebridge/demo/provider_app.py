"""The demo provider app: a clinician's tool that integrates with carebridge as any
external provider app would (docs/oidc.md is the guide this code follows).

- Sign-in: OpenID Connect authorization code flow with PKCE (S256), state and nonce,
  through Authlib's client; the authorization response's ``iss`` is checked (RFC 9207)
  and the ID token validated against the published JWKS.
- Work: the messaging API with the access token as a bearer token.

It reaches carebridge only over HTTP at the issuer URL, never through the database or
Python calls. Its own session lives in a cookie sealed with a key derived from its client
secret: the app's secret, not carebridge's keyring.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge.demo import provider_webhooks
from carebridge.demo.seed import PROVIDER_PATH, DemoConfig, load_config
from carebridge.http import cookies
from carebridge.http.forms import read_form
from carebridge.http.templates import templates_for
from carebridge.runtime import Runtime

templates = templates_for(Path(__file__).with_name("templates"))
COOKIE = cookies.DEMO_PROVIDER.base  # no prefix: named alike over http and https
SCOPE = "openid messaging.read messaging.write"
LOGIN_SECONDS = 600
# The demo team's roles (a new team's defaults, messaging.roles): the app knows its
# team's roles as any app is told them, by configuration.
STAFF_ROLES = ("clinician", "nurse", "front desk", "team admin")


class SignInError(Exception):
    """The sign-in did not complete; the message is shown to the clinician."""


@dataclass
class Discovery:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None


def _config(request: Request) -> DemoConfig:
    runtime: Runtime = request.app.state.runtime
    config = load_config(runtime)
    if config is None:
        raise SignInError("The demo is not seeded: start carebridge with `serve --demo`.")
    return config


def _transport(request: Request) -> httpx2.AsyncBaseTransport | None:
    # Tests route the app's HTTP calls back into the app in-process; a server uses the net.
    transport: httpx2.AsyncBaseTransport | None = getattr(request.app.state, "demo_transport", None)
    return transport


def _http(request: Request, config: DemoConfig) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=config.issuer, transport=_transport(request), timeout=10)


# The app's own session cookie


def _cookie_key(config: DemoConfig) -> bytes:
    hkdf = HKDF(algorithm=SHA256(), length=32, salt=None, info=b"demo-provider-session")
    return hkdf.derive(config.client_secret.encode())


def _seal(config: DemoConfig, data: dict[str, Any]) -> str:
    nonce = secrets.token_bytes(12)
    body = AESGCM(_cookie_key(config)).encrypt(nonce, json.dumps(data).encode(), COOKIE.encode())
    return base64.urlsafe_b64encode(nonce + body).decode()


def _unseal(config: DemoConfig, request: Request) -> dict[str, Any]:
    value = request.cookies.get(COOKIE)
    if not value:
        return {}
    try:
        raw = base64.urlsafe_b64decode(value.encode())
        plain = AESGCM(_cookie_key(config)).decrypt(raw[:12], raw[12:], COOKIE.encode())
        data: dict[str, Any] = json.loads(plain)
    except (ValueError, InvalidTag):
        return {}
    return data


def _with_session(response: Response, config: DemoConfig, data: dict[str, Any] | None) -> Response:
    secure = config.issuer.startswith("https://")
    if data is None:
        response.delete_cookie(COOKIE, path=PROVIDER_PATH)
    else:
        response.set_cookie(
            COOKIE,
            _seal(config, data),
            path=PROVIDER_PATH,
            httponly=True,
            secure=secure,
            samesite="lax",
        )
    return response


# OpenID Connect


async def _discover(http: httpx2.AsyncClient) -> Discovery:
    answer = await http.get("/.well-known/openid-configuration")
    answer.raise_for_status()
    document = answer.json()
    return Discovery(
        authorization_endpoint=document["authorization_endpoint"],
        token_endpoint=document["token_endpoint"],
        jwks_uri=document["jwks_uri"],
        end_session_endpoint=document.get("end_session_endpoint"),
    )


def _oauth(request: Request, config: DemoConfig) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id=config.client_id,
        client_secret=config.client_secret,
        scope=SCOPE,
        redirect_uri=config.redirect_uri,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",  # noqa: S106  (a method name)
        transport=_transport(request),
        timeout=10,
    )


async def _validate_id_token(
    http: httpx2.AsyncClient, discovery: Discovery, config: DemoConfig, token: str, nonce: str
) -> dict[str, Any]:
    keys = KeySet.import_key_set((await http.get(discovery.jwks_uri)).json())
    try:
        decoded = jwt.decode(token, keys, algorithms=["ES256", "RS256"])
    except (JoseError, ValueError):
        raise SignInError("The ID token's signature did not verify.") from None
    claims = decoded.claims
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience or []
    if claims.get("iss") != config.issuer or config.client_id not in audiences:
        raise SignInError("The ID token was not issued to this app by this issuer.")
    # Bytes: compare_digest raises TypeError for str holding anything but ASCII.
    if not secrets.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
        raise SignInError("The ID token does not answer this sign-in (nonce).")
    if int(claims.get("exp", 0)) < time.time():
        raise SignInError("The ID token has expired.")
    return dict(claims)


# Pages


def _page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    return templates.TemplateResponse(
        request, f"demo/{name}", {"base": PROVIDER_PATH, **context}, status_code=status
    )


def _problem_text(answer: httpx2.Response) -> str:
    try:
        return str(answer.json().get("detail") or answer.reason_phrase)
    except ValueError:
        return answer.reason_phrase


async def home(request: Request) -> Response:
    try:
        config = _config(request)
    except SignInError as exc:
        return _page(request, "error.html", 503, message=str(exc))
    session = _unseal(config, request)
    token = session.get("access_token")
    if not token:
        return _page(request, "signed_out.html")
    async with _http(request, config) as http:
        answer = await http.get(
            "/api/v1/messaging/threads", headers={"Authorization": f"Bearer {token}"}
        )
    if answer.status_code == 401:
        return _with_session(_page(request, "signed_out.html", expired=True), config, None)
    if answer.status_code != 200:
        # The API's refusal (a 403 for someone who is not staff) is the page's answer.
        status = answer.status_code if 400 <= answer.status_code < 500 else 502
        return _page(request, "error.html", status, message=_problem_text(answer))
    threads = answer.json()["threads"]
    started_by = {thread["id"]: thread["started_by"] for thread in threads}
    return _page(
        request,
        "threads.html",
        threads=threads,
        patients=config.patients,
        events=provider_webhooks.recent(request.app.state.runtime),
        started_by=started_by,
        webhooks=config.webhook_secret is not None,
        invited=request.query_params.get("invited") == "1",
        roles=STAFF_ROLES,
    )


async def login(request: Request) -> Response:
    try:
        config = _config(request)
        async with _http(request, config) as http:
            discovery = await _discover(http)
    except (SignInError, httpx2.HTTPError) as exc:
        return _page(request, "error.html", 503, message=str(exc))
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    verifier = secrets.token_urlsafe(48)
    query = {
        "response_type": "code",
        "client_id": config.client_id,
        "redirect_uri": config.redirect_uri,
        "scope": SCOPE,
        "state": state,
        "nonce": nonce,
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
    }
    response = RedirectResponse(
        f"{discovery.authorization_endpoint}?{urlencode(query)}", status_code=303
    )
    pending = {"state": state, "nonce": nonce, "verifier": verifier, "at": time.time()}
    return _with_session(response, config, {"pending": pending})


async def callback(request: Request) -> Response:
    try:
        config = _config(request)
        pending = _unseal(config, request).get("pending") or {}
        params = request.query_params
        if not pending or time.time() - float(pending.get("at", 0)) > LOGIN_SECONDS:
            raise SignInError("This sign-in has expired or was started elsewhere: start again.")
        # Bytes: a crafted state may hold any text, and compare_digest takes only ASCII str.
        state = params.get("state", "").encode()
        if not secrets.compare_digest(state, str(pending["state"]).encode()):
            raise SignInError("The answer does not belong to this sign-in (state).")
        if params.get("iss") != config.issuer:  # RFC 9207: mix-up defence
            raise SignInError("The answer came from an unexpected issuer.")
        if "error" in params:
            raise SignInError(f"carebridge answered: {params.get('error')}")
        async with _http(request, config) as http:
            discovery = await _discover(http)
            async with _oauth(request, config) as oauth:
                try:
                    token = await oauth.fetch_token(
                        discovery.token_endpoint,
                        code=params.get("code", ""),
                        code_verifier=pending["verifier"],
                    )
                except OAuthError as exc:
                    # A code carebridge did not issue, or already redeemed (a reloaded
                    # callback): its OAuth error code, never a traceback.
                    raise SignInError(f"carebridge refused the sign-in ({exc.error}).") from None
            claims = await _validate_id_token(
                http, discovery, config, token["id_token"], pending["nonce"]
            )
    except SignInError as exc:
        return _with_session(_page(request, "error.html", 400, message=str(exc)), config, None)
    except (httpx2.HTTPError, KeyError, ValueError) as exc:
        message = f"The code exchange failed ({type(exc).__name__})."
        return _page(request, "error.html", 502, message=message)
    session = {
        "access_token": token["access_token"],
        "id_token": token["id_token"],
        "sub": claims["sub"],
    }
    return _with_session(RedirectResponse(f"{PROVIDER_PATH}/", 303), config, session)


async def _api(
    request: Request, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx2.Response | None:
    config = _config(request)
    token = _unseal(config, request).get("access_token")
    if not token:
        return None
    async with _http(request, config) as http:
        return await http.request(
            method, path, json=body, headers={"Authorization": f"Bearer {token}"}
        )


async def thread(request: Request) -> Response:
    thread_id = request.path_params["thread_id"]
    answer = await _api(request, "GET", f"/api/v1/messaging/threads/{thread_id}")
    if answer is None or answer.status_code == 401:
        return RedirectResponse(f"{PROVIDER_PATH}/", 303)
    if answer.status_code != 200:
        return _page(request, "error.html", answer.status_code, message=_problem_text(answer))
    detail = answer.json()
    return _page(request, "thread.html", thread=detail["thread"], messages=detail["messages"])


async def start_thread(request: Request) -> Response:
    form = await read_form(request, multiline=("subject", "body"))
    body = {
        "patient_id": form.get("patient_id", ""),
        "subject": form.get("subject", ""),
        "body": form.get("body", ""),
    }
    answer = await _api(request, "POST", "/api/v1/messaging/threads", body)
    if answer is None or answer.status_code == 401:
        return RedirectResponse(f"{PROVIDER_PATH}/", 303)
    if answer.status_code != 201:
        return _page(request, "error.html", answer.status_code, message=_problem_text(answer))
    return RedirectResponse(f"{PROVIDER_PATH}/threads/{answer.json()['thread']['id']}", 303)


async def reply(request: Request) -> Response:
    thread_id = request.path_params["thread_id"]
    form = await read_form(request, multiline=("body",))
    path = f"/api/v1/messaging/threads/{thread_id}/messages"
    answer = await _api(request, "POST", path, {"body": form.get("body", "")})
    if answer is None or answer.status_code == 401:
        return RedirectResponse(f"{PROVIDER_PATH}/", 303)
    if answer.status_code != 201:
        return _page(request, "error.html", answer.status_code, message=_problem_text(answer))
    return RedirectResponse(f"{PROVIDER_PATH}/threads/{thread_id}", 303)


async def invite(request: Request) -> Response:
    """A team admin invites a staff member (the API refuses anyone else's token)."""
    form = await read_form(request)
    body = {"email": form.get("email", ""), "role": form.get("role", "")}
    answer = await _api(request, "POST", "/api/v1/messaging/staff/invites", body)
    if answer is None or answer.status_code == 401:
        return RedirectResponse(f"{PROVIDER_PATH}/", 303)
    if answer.status_code != 201:
        return _page(request, "error.html", answer.status_code, message=_problem_text(answer))
    return RedirectResponse(f"{PROVIDER_PATH}/?invited=1", 303)


async def webhook(request: Request) -> Response:
    config = load_config(request.app.state.runtime)
    return await provider_webhooks.receive(request, config.webhook_secret if config else None)


async def logout(request: Request) -> Response:
    await read_form(request)  # CSRF: another site cannot sign the clinician out
    config = _config(request)
    session = _unseal(config, request)
    target = f"{PROVIDER_PATH}/"
    if session.get("id_token"):
        async with _http(request, config) as http:
            discovery = await _discover(http)
        if discovery.end_session_endpoint:
            query = {
                "id_token_hint": session["id_token"],
                "post_logout_redirect_uri": config.app_url,
                "client_id": config.client_id,
            }
            target = f"{discovery.end_session_endpoint}?{urlencode(query)}"
    return _with_session(RedirectResponse(target, 303), config, None)


def routes() -> list[BaseRoute]:
    base = PROVIDER_PATH
    return [
        Route(f"{base}/", home, methods=["GET"]),
        Route(f"{base}/login", login, methods=["GET"]),
        Route(f"{base}/callback", callback, methods=["GET"]),
        Route(f"{base}/logout", logout, methods=["POST"]),
        Route(f"{base}/threads", start_thread, methods=["POST"]),
        Route(f"{base}/threads/{{thread_id}}", thread, methods=["GET"]),
        Route(f"{base}/threads/{{thread_id}}/messages", reply, methods=["POST"]),
        Route(f"{base}{provider_webhooks.RECEIVER}", webhook, methods=["POST"]),
        Route(f"{base}/staff/invites", invite, methods=["POST"]),
    ]
