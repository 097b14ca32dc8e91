"""Token grants answered on the event loop (AuthorizationServer.answer_on_loop, PostgreSQL):
the grant's lookup and its claim on the loop's own connections, Authlib between them; and
every request it cannot answer goes to a worker thread, from the start, nothing written.
On SQLite every grant runs in a worker thread."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import event, select
from sqlalchemy.dialects import postgresql
from starlette.testclient import TestClient
from statements import statements

from carebridge.audit import AuditRecord
from carebridge.db import DirectStatement
from carebridge.runtime import Runtime
from identity.oidc.context import NoTransactionError, Plan
from identity.oidc.models import OidcRefreshToken
from identity.oidc.server import AuthorizationServer
from tests.oidc import helpers

T = TypeVar("T")


def _threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The token requests answered in a worker thread, as they are."""
    ran: list[str] = []
    run = AuthorizationServer.run

    async def counted(self: AuthorizationServer, work: Callable[[], T]) -> T:
        ran.append("worker thread")
        return await run(self, work)

    monkeypatch.setattr(AuthorizationServer, "run", counted)
    return ran


def _code(client: TestClient, registered: helpers.Registered) -> tuple[str, str]:
    verifier, challenge = helpers.pkce()
    answer = helpers.approve(client, helpers.authorization_params(registered, challenge))
    return answer["code"][0], verifier


def _refresh(client: TestClient, registered: helpers.Registered, token: str) -> httpx.Response:
    return client.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": token},
        auth=helpers.basic(registered),
    )


@pytest.fixture
def returning(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> tuple[helpers.Registered, dict[str, Any]]:
    """A client, and the tokens of a person's first exchange with it (which records their
    subject for the client, and fills the client cache: both in a worker thread)."""
    registered = helpers.register(runtime)
    helpers.use_session(client, runtime, helpers.person(runtime, tmp_path).session_token)
    code, verifier = _code(client, registered)
    first = helpers.exchange(client, registered, code, verifier)
    assert first.status_code == 200, first.text
    return registered, first.json()


def test_a_refresh_and_a_returning_users_exchange_run_on_the_event_loop(
    client: TestClient,
    runtime: Runtime,
    returning: tuple[helpers.Registered, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registered, first = returning
    threads = _threads(monkeypatch)
    code, verifier = _code(client, registered)
    checkouts: list[object] = []

    def checkout(*args: object) -> None:
        checkouts.append(args)

    event.listen(runtime.engine, "checkout", checkout)
    try:
        with statements(runtime.engine) as seen:
            refreshed = _refresh(client, registered, first["refresh_token"])
            exchanged = helpers.exchange(client, registered, code, verifier)
    finally:
        event.remove(runtime.engine, "checkout", checkout)
    assert refreshed.status_code == 200, refreshed.text
    assert exchanged.status_code == 200, exchanged.text
    assert "id_token" in exchanged.json()
    if runtime.settings.uses_sqlite:
        assert threads == ["worker thread", "worker thread"]
        return
    assert threads == []
    # Nothing blocks the loop: the engine's (synchronous) connections are not touched.
    assert checkouts == []
    # Each: its lookup, then its claim gating the successor's insert; no BEGIN or COMMIT.
    assert [sql.split()[0] for sql in seen] == ["SELECT", "WITH", "SELECT", "WITH"]
    assert "FROM oidc_refresh_token" in seen[0] and "FROM oidc_authorization_code" in seen[2]
    assert "INSERT INTO oidc_refresh_token" in seen[1] and "INSERT INTO" in seen[3]
    with runtime.sessions() as db:
        tokens = db.scalars(select(OidcRefreshToken).order_by(OidcRefreshToken.issued_at)).all()
    # The first, used; its successor; the second exchange's.
    assert [token.used_at is not None for token in tokens] == [True, False, False]
    assert tokens[0].family_id == tokens[1].family_id != tokens[2].family_id


def test_a_reuse_is_answered_by_a_worker_thread_that_revokes_and_audits(
    client: TestClient,
    runtime: Runtime,
    returning: tuple[helpers.Registered, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registered, first = returning
    assert _refresh(client, registered, first["refresh_token"]).status_code == 200
    threads = _threads(monkeypatch)
    again = _refresh(client, registered, first["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert threads == ["worker thread"]
    with runtime.sessions() as db:
        revoked = db.scalars(select(OidcRefreshToken.revoked_at)).all()
        actions = db.scalars(select(AuditRecord.action)).all()
    assert len(revoked) == 2 and None not in revoked
    assert actions.count("identity.oidc.refresh.reused") == 1


def test_an_error_answered_on_the_event_loop_writes_nothing(
    client: TestClient,
    runtime: Runtime,
    returning: tuple[helpers.Registered, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Authlib's own refusals need no transaction: answered where they are found.
    registered, _ = returning
    code, _verifier = _code(client, registered)
    threads = _threads(monkeypatch)
    wrong = helpers.exchange(client, registered, code, "x" * 43)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    unknown = _refresh(client, registered, "not-a-token")
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_grant"
    expected = [] if not runtime.settings.uses_sqlite else ["worker thread"] * 2
    assert threads == expected
    # The code was not spent: the right verifier still gets tokens.
    assert helpers.exchange(client, registered, code, _verifier).status_code == 200


@pytest.mark.parametrize("failing", ["first_on", "rows_on"])
def test_a_database_failure_on_the_event_loop_is_answered_by_a_worker_thread(  # noqa: PLR0917
    client: TestClient,
    runtime: Runtime,
    returning: tuple[helpers.Registered, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failing: str,
) -> None:
    # The lookup, or the claim, fails on the loop's connection (before it reaches the
    # database: nothing written): the whole request runs again in a worker thread.
    registered, first = returning

    async def lost(*_: Any) -> Any:
        raise ConnectionResetError("the database went away")

    monkeypatch.setattr(DirectStatement, failing, lost)
    threads = _threads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="identity.oidc.server"):
        refreshed = _refresh(client, registered, first["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert threads == ["worker thread"]
    if not runtime.settings.uses_sqlite:
        assert "ConnectionResetError" in caplog.text
        assert first["refresh_token"] not in caplog.text
    with runtime.sessions() as db:
        tokens = db.scalars(select(OidcRefreshToken).order_by(OidcRefreshToken.issued_at)).all()
    assert [token.used_at is not None for token in tokens] == [True, False]


def test_the_loop_connections_close_when_the_app_stops(
    runtime: Runtime, returning: tuple[helpers.Registered, dict[str, Any]], client: TestClient
) -> None:
    registered, first = returning
    assert _refresh(client, registered, first["refresh_token"]).status_code == 200
    if runtime.settings.uses_sqlite:
        assert runtime.loop_connections is None
        return
    assert _loop_backends(runtime) >= 1
    client.__exit__(None, None, None)  # the app's shutdown
    assert _loop_backends(runtime) == 0


def _loop_backends(runtime: Runtime) -> int:
    with runtime.engine.connect() as connection:
        return int(
            connection.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'carebridge-loop'"
            ).scalar_one()
        )


# The plan a request answered on the event loop carries


def test_a_plan_answers_only_what_it_fetched_and_defers_one_write() -> None:
    statement = DirectStatement(select(OidcRefreshToken.token_hash))
    other = DirectStatement(select(OidcRefreshToken.family_id))
    plan = Plan(postgresql.dialect(), {Plan.key(statement, {"a": 1}): "row"})
    assert plan.read(statement, {"a": 1}) == "row"
    for statement_, params in ((statement, {"a": 2}), (other, {"a": 1})):
        with pytest.raises(NoTransactionError):
            plan.read(statement_, params)
    plan.defer(statement, {"b": 1})
    with pytest.raises(NoTransactionError):
        plan.defer(other, {"b": 2})
    assert plan.write == (statement, {"b": 1})
