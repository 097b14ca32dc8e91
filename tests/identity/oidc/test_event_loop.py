"""Token grants answered on the event loop (identity.oidc.token_fast_path, PostgreSQL):
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
from asyncpg.exceptions import DeadlockDetectedError
from sqlalchemy import event, select
from sqlalchemy.dialects import postgresql
from starlette.testclient import TestClient

from carebridge.audit import AuditRecord
from carebridge.db import DirectStatement
from carebridge.runtime import Runtime
from identity.oidc.execution import NoTransactionError, Planned
from identity.oidc.models import OidcRefreshToken
from identity.oidc.server import AuthorizationServer
from tests.identity.oidc import helpers

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


def _failing_claim(monkeypatch: pytest.MonkeyPatch, error: BaseException, *, after: bool) -> None:
    """Make the event loop's claim (the gated statement, not the lookup) fail: before it
    reaches the database, or ``after`` it ran (and committed)."""
    rows_on = DirectStatement.rows_on

    async def failing(self: DirectStatement, connection: Any, dialect: Any, params: Any) -> Any:
        if "INSERT INTO" not in str(self.statement):
            return await rows_on(self, connection, dialect, params)
        if after:
            await rows_on(self, connection, dialect, params)
        raise error

    monkeypatch.setattr(DirectStatement, "rows_on", failing)


@pytest.mark.parametrize(
    "failure",
    ["the lookup's connection lost", "the claim refused by the server"],
)
def test_a_database_failure_before_the_claim_is_answered_by_a_worker_thread(  # noqa: PLR0917
    client: TestClient,
    runtime: Runtime,
    returning: tuple[helpers.Registered, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    # Nothing was written (a statement the server refused rolled back): the whole request
    # runs again in a worker thread.
    registered, first = returning
    if failure == "the lookup's connection lost":

        async def lost(*_: Any) -> Any:
            raise ConnectionResetError("the database went away")

        monkeypatch.setattr(DirectStatement, "first_on", lost)
        expected = "ConnectionResetError"
    else:
        _failing_claim(monkeypatch, DeadlockDetectedError("deadlock detected"), after=False)
        expected = "DeadlockDetectedError"
    threads = _threads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="identity.oidc.token_fast_path"):
        refreshed = _refresh(client, registered, first["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert threads == ["worker thread"]
    if not runtime.settings.uses_sqlite:
        assert expected in caplog.text
        assert first["refresh_token"] not in caplog.text
    with runtime.sessions() as db:
        tokens = db.scalars(select(OidcRefreshToken).order_by(OidcRefreshToken.issued_at)).all()
    assert [token.used_at is not None for token in tokens] == [True, False]


def test_a_claim_whose_outcome_is_unknown_is_a_500_never_a_reuse(
    client: TestClient,
    runtime: Runtime,
    returning: tuple[helpers.Registered, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The connection is lost after the claim committed: answering again would find the
    # token used and revoke its family as stolen. It is answered as a failed commit is.
    registered, first = returning
    _failing_claim(monkeypatch, ConnectionResetError("the database went away"), after=True)
    threads = _threads(monkeypatch)
    failed = _refresh(client, registered, first["refresh_token"])
    if runtime.settings.uses_sqlite:
        assert failed.status_code == 200 and threads == ["worker thread"]
        return
    assert failed.status_code == 500 and "refresh_token" not in failed.text
    assert threads == []
    with runtime.sessions() as db:
        tokens = db.scalars(select(OidcRefreshToken).order_by(OidcRefreshToken.issued_at)).all()
        actions = db.scalars(select(AuditRecord.action)).all()
    # Redeemed, its successor stored (never delivered), nothing revoked, no reuse logged.
    assert [token.used_at is not None for token in tokens] == [True, False]
    assert [token.revoked_at for token in tokens] == [None, None]
    assert "identity.oidc.refresh.reused" not in actions


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
    plan = Planned(postgresql.dialect(), {Planned.key(statement, {"a": 1}): "row"})
    assert plan.read(statement, {"a": 1}) == "row"
    for statement_, params in ((statement, {"a": 2}), (other, {"a": 1})):
        with pytest.raises(NoTransactionError):
            plan.read(statement_, params)
    plan.defer(statement, {"b": 1})
    with pytest.raises(NoTransactionError):
        plan.defer(other, {"b": 2})
    assert plan.write == (statement, {"b": 1})
