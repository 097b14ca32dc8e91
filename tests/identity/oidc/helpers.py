"""Builders for the OIDC tests: clients, signed-in patients, PKCE, driving the
authorization page over HTTP (a TestClient in process, or httpx against a live server)."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from sqlalchemy import Connection, event, update
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from carebridge.db import transaction
from carebridge.runtime import Runtime
from identity.oidc import clients
from identity.oidc.execution import Planned
from tests.identity import factories
from tests.identity.roster_helpers import import_roster, link

REDIRECT = "https://app.example.org/callback"
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


@dataclass(frozen=True)
class Registered:
    client_id: str
    secret: str | None
    redirect_uri: str


def register(
    runtime: Runtime,
    *,
    client_type: str = "confidential",
    scopes: str = "openid offline_access email messaging.read messaging.write",
    redirect_uri: str = REDIRECT,
    **options: Any,
) -> Registered:
    with transaction(runtime.sessions) as db:
        created = clients.create(
            db,
            runtime.settings,
            name=options.pop("name", "Clinic Scheduler"),
            client_type=client_type,
            redirect_uris=[redirect_uri],
            scopes=scopes.split(),
            **options,
        )
    return Registered(created.client_id, created.secret, redirect_uri)


@dataclass(frozen=True)
class Person:
    account_id: str
    session_token: str
    patient_id: str | None


def person(runtime: Runtime, tmp_path: Path | None = None, *, verified: bool = True) -> Person:
    """An account past MFA (a level-2 session); verified = linked to a roster patient."""
    account_id = factories.account(runtime)
    factories.totp(runtime, account_id)
    token = factories.session(runtime, account_id, level=2)
    patient_id = None
    if verified:
        assert tmp_path is not None
        patient_id = import_roster(runtime, tmp_path)["zeb"]
        link(runtime, account_id, patient_id)
    return Person(account_id, token, patient_id)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def authorization_params(
    registered: Registered, challenge: str, *, scope: str = "openid offline_access", **extra: str
) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": registered.client_id,
        "redirect_uri": registered.redirect_uri,
        "scope": scope,
        "state": secrets.token_urlsafe(8),
        "nonce": secrets.token_urlsafe(8),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }


def consent_fields(html: str) -> list[tuple[str, str]]:
    return [(name, unescape(value)) for name, value in _HIDDEN.findall(html)]


def approve(client: TestClient | httpx.Client, params: dict[str, str]) -> dict[str, list[str]]:
    """Open the authorization URL, approve on the consent page if asked; returns the
    redirect's query parameters (code, state, iss or error)."""
    response = client.get(f"/authorize?{urlencode(params)}", follow_redirects=False)
    if response.status_code == 200:
        fields = consent_fields(response.text)
        response = client.post(
            "/authorize",
            content=urlencode([*fields, ("decision", "allow")]),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )
    assert response.status_code in (302, 303), response.text[:500]
    location = response.headers["location"]
    assert location.startswith(params["redirect_uri"]), location
    return parse_qs(urlsplit(location).query)


def use_session(client: TestClient, runtime: Runtime, token: str) -> None:
    factories.use_token(client, runtime, token)


def exchange(
    client: TestClient, registered: Registered, code: str, verifier: str, **extra: str
) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": registered.redirect_uri,
        "code_verifier": verifier,
        **extra,
    }
    return client.post("/oauth2/token", data=data, auth=basic(registered))


def lose_the_claim(
    monkeypatch: pytest.MonkeyPatch, grant: type[Any], model: type[Any]
) -> list[str]:
    """Make ``grant`` find its code or refresh token (``model``) used by another request
    between its lookup and its claim: a race, made certain. Returns where each race
    ran, as it runs: "event loop" or "worker thread"."""
    save_token = grant.save_token
    where: list[str] = []

    def raced(self: Any, token: dict[str, Any]) -> None:
        used = update(model).values(used_at=datetime.now(UTC))
        execution = self.server.execution
        if not isinstance(execution, Planned):
            # In a worker thread: in the request's transaction, before its claim.
            where.append("worker thread")
            execution.connection().execute(used)
        else:
            where.append("event loop")
            # On the event loop the claim runs once Authlib has answered: another
            # request's use, committed before then.
            with self.server.runtime.engine.begin() as other:
                other.execute(used)
        save_token(self, token)

    monkeypatch.setattr(grant, "save_token", raced)
    return where


@contextmanager
def provider_sessions() -> Iterator[list[Session]]:
    """The ORM Sessions the provider's request transactions (identity.oidc.execution.InTransaction)
    begin inside the block: a hot path that needs none must make none."""
    begun: list[Session] = []

    def listener(session: Session, *_: object) -> None:
        # A unit's Session is bound to its connection; a background task's to the engine.
        if isinstance(session.bind, Connection):
            begun.append(session)

    event.listen(Session, "after_begin", listener)
    try:
        yield begun
    finally:
        event.remove(Session, "after_begin", listener)


def on_worker_threads(runtime: Runtime) -> None:
    """Answer every token request in a worker thread, in a transaction, as on SQLite: no
    event loop connections (identity.oidc.token_fast_path). Before the app starts."""
    runtime.__dict__["loop_connections"] = None


def basic(registered: Registered) -> tuple[str, str] | None:
    return (registered.client_id, registered.secret) if registered.secret else None
