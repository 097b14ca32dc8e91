"""Upper bounds on the statements each hot path sends the database, as the drivers receive
them (tests.statements: the speed kit's statements included), on both backends.

The guard against a hot path that starts making a round trip per row, per check or per
lookup, next to its benchmark (bench/token_endpoint.py, bench/messages.py,
bench/signin.py). Bounds, not pins: each path runs at most this many statements today,
and may restate its SQL freely within them; a change that needs more says why here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from carebridge.db import engine as db_engine
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from tests.identity import verification_mail
from tests.identity.oidc import helpers
from tests.messaging.conftest import World, build_world, start_thread
from tests.statements import statements

# The most statements each path may run, (SQLite, PostgreSQL). PostgreSQL's are fewer:
# there the speed kit writes several rows, or a claim and its rows, in one statement.
BOUNDS: dict[str, tuple[int, int]] = {
    # The lookup, then the claim gating the successor's insert (PostgreSQL: on the event
    # loop, in autocommit; SQLite: BEGIN, the lookup, the claim, the insert).
    "token refresh": (4, 2),
    "code exchange": (4, 2),
    # The caller's credentials; who hears of it (carebridge.events, issue 20: the thread's
    # team clients, the patient's authorized apps, their webhook endpoints, in one
    # statement); then everything, its event rows included, in one statement under a key
    # in hand.
    "message post": (9, 3),
    # The caller's credentials, then the thread, its page and the audit record in one.
    "message page": (5, 2),
    # Argon2 dominates it (tens of ms); one of these re-reads the password's changed_at
    # after the check, so a sign-in in flight cannot outlast a reset (identity.accounts.
    # password_unchanged), and one takes the account's session lock before the session is
    # written, so a sign-in cannot outlast "end every session" (identity.sessions).
    "password sign-in": (12, 8),
}


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # Only the path's own statements: no audit chainer running beside it (it links
    # records every second on PostgreSQL).
    return Settings(data_dir=tmp_path / "data", database_url=database_url, audit_chain_seconds=60)


@pytest.fixture(autouse=True)
def _no_liveness_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nor the pool's check of a connection idle for over a second (on a slow machine).
    monkeypatch.setattr(db_engine, "PING_AFTER_IDLE_SECONDS", 3600.0)


def _within(runtime: Runtime, path: str, seen: list[str]) -> None:
    bound = BOUNDS[path][0 if runtime.settings.uses_sqlite else 1]
    assert len(seen) <= bound, f"{path}: {len(seen)} statements, at most {bound}:\n" + "\n".join(
        seen
    )


def _refresh_token(client: TestClient, registered: helpers.Registered) -> str:
    verifier, challenge = helpers.pkce()
    answer = helpers.approve(client, helpers.authorization_params(registered, challenge))
    response = helpers.exchange(client, registered, answer["code"][0], verifier)
    assert response.status_code == 200, response.text
    token: str = response.json()["refresh_token"]
    return token


def test_token_grants(client: TestClient, runtime: Runtime, tmp_path: Path) -> None:
    registered = helpers.register(runtime)
    someone = helpers.person(runtime, tmp_path)
    helpers.use_session(client, runtime, someone.session_token)
    first = _refresh_token(client, registered)  # the subject recorded: a returning user's
    with statements(runtime.engine) as seen:
        refreshed = client.post(
            "/oauth2/token",
            data={"grant_type": "refresh_token", "refresh_token": first},
            auth=helpers.basic(registered),
        )
    assert refreshed.status_code == 200, refreshed.text
    _within(runtime, "token refresh", seen)
    verifier, challenge = helpers.pkce()
    answer = helpers.approve(client, helpers.authorization_params(registered, challenge))
    with statements(runtime.engine) as seen:
        exchanged = helpers.exchange(client, registered, answer["code"][0], verifier)
    assert exchanged.status_code == 200, exchanged.text
    _within(runtime, "code exchange", seen)


@pytest.fixture
def world(runtime: Runtime, tmp_path: Path) -> World:
    return build_world(runtime, tmp_path)


def test_message_post_and_page(client: TestClient, world: World) -> None:
    thread_id = start_thread(client, world)
    runtime = world.runtime
    with statements(runtime.engine) as seen:
        posted = client.post(
            f"/api/v1/messaging/threads/{thread_id}/messages",
            json={"body": "Your prescription is ready."},
            headers=world.app(),
        )
    assert posted.status_code == 201, posted.text
    _within(runtime, "message post", seen)
    with statements(runtime.engine) as seen:
        page = client.get(f"/api/v1/messaging/threads/{thread_id}", headers=world.app())
    assert page.status_code == 200, page.text
    assert [m["seq"] for m in page.json()["messages"]] == [1, 2]
    _within(runtime, "message page", seen)


def test_password_sign_in(client: TestClient, runtime: Runtime) -> None:
    body = {"login": "jane@example.org", "password": "quiet harbour lamp"}
    verification_mail.signed_up(client, body["login"], body["password"])
    with statements(runtime.engine) as seen:
        signed_in = client.post("/api/v1/signin", json=body)
    assert signed_in.status_code == 200, signed_in.text
    _within(runtime, "password sign-in", seen)
