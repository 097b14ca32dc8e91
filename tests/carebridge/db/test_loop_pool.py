"""The event loop's PostgreSQL connections (carebridge.db.loop_pool): reused while
healthy; a failed or interrupted one never reused; a database that cannot be reached left
alone for a while; closed with the app. PostgreSQL only: SQLite has none."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from sqlalchemy import Table, bindparam, insert, select
from sqlalchemy.engine import make_url

from carebridge.db import DATABASE_ERRORS, Budget, DirectStatement, LoopConnections, loop_pool
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity.oidc.models import OidcWithdrawal

_WITHDRAWN = cast(Table, OidcWithdrawal.__table__)
T = TypeVar("T")


@pytest.fixture
def pg_runtime(tmp_path: Path, postgres_database: str) -> Iterator[Runtime]:
    runtime = Runtime.build(Settings(data_dir=tmp_path / "data", database_url=postgres_database))
    yield runtime
    runtime.close()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on a new event loop in a thread of its own: a browser test's Playwright may
    hold this thread's loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _pool(runtime: Runtime, size: int = 1) -> LoopConnections:
    return LoopConnections(runtime.engine.url, size)


def test_a_healthy_connection_is_reused_in_autocommit(pg_runtime: Runtime) -> None:
    pool = _pool(pg_runtime)

    async def twice() -> tuple[int, int, bool]:
        assert pool.usable()
        async with pool.connection() as first:
            pid = first.get_server_pid()
            in_transaction = first.is_in_transaction()
        async with pool.connection() as second:
            again = second.get_server_pid()
        await pool.close()
        return pid, again, in_transaction

    pid, again, in_transaction = _run(twice())
    assert pid == again and not in_transaction


def test_a_connection_the_server_dropped_is_replaced(pg_runtime: Runtime) -> None:
    pool = _pool(pg_runtime)

    async def dropped() -> tuple[int, int]:
        assert pool.usable()
        async with pool.connection() as connection:
            pid = connection.get_server_pid()
        with pg_runtime.engine.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        await asyncio.sleep(0.2)  # the driver reads the server's goodbye
        async with pool.connection() as connection:
            assert await connection.fetchval("SELECT 1") == 1
            replaced = connection.get_server_pid()
        await pool.close()
        return pid, replaced

    pid, replaced = _run(dropped())
    assert pid != replaced


def test_a_connection_whose_statement_failed_is_not_reused(pg_runtime: Runtime) -> None:
    pool = _pool(pg_runtime)

    async def divide(pids: list[int]) -> None:
        async with pool.connection() as connection:
            pids.append(connection.get_server_pid())
            await connection.fetch("SELECT 1 / 0")

    async def failed() -> tuple[int, int]:
        assert pool.usable()
        pids: list[int] = []
        with pytest.raises(DATABASE_ERRORS):
            await divide(pids)
        async with pool.connection() as connection:
            assert await connection.fetchval("SELECT 1") == 1
            after = connection.get_server_pid()
        await pool.close()
        return pids[0], after

    pid, after = _run(failed())
    assert pid != after


def test_a_statement_interrupted_by_cancellation_never_returns_its_connection(
    pg_runtime: Runtime,
) -> None:
    pool = _pool(pg_runtime)

    async def cancelled() -> tuple[int, int]:
        assert pool.usable()
        pids: list[int] = []

        async def slow() -> None:
            async with pool.connection() as connection:
                pids.append(connection.get_server_pid())
                await connection.fetch("SELECT pg_sleep(5)")

        task = asyncio.ensure_future(slow())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with pool.connection() as connection:
            assert await connection.fetchval("SELECT 1") == 1
            after = connection.get_server_pid()
        await pool.close()
        return pids[0], after

    interrupted, after = _run(cancelled())
    assert interrupted != after


def test_a_database_it_cannot_reach_is_left_alone_for_a_while(
    pg_runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A port nothing listens on; the password must not reach the log.
    url = make_url("postgresql+psycopg://carebridge:s3cret-word@127.0.0.1:9/test")
    pool = LoopConnections(url, 1)
    monkeypatch.setattr(loop_pool, "RETRY_AFTER_SECONDS", 0.3)

    async def unreachable() -> tuple[bool, bool, bool]:
        assert pool.usable()
        with pytest.raises(DATABASE_ERRORS):
            async with pool.connection():
                pass
        waiting = pool.usable()
        await asyncio.sleep(0.4)
        retrying = pool.usable()
        await pool.close()
        return waiting, retrying, pool.usable()

    with caplog.at_level(logging.WARNING, logger="carebridge.db.loop_pool"):
        waiting, retrying, closed = _run(unreachable())
    assert (waiting, retrying, closed) == (False, True, False)
    assert "cannot connect" in caplog.text and "s3cret-word" not in caplog.text


def test_only_the_event_loop_that_first_used_them_may(pg_runtime: Runtime) -> None:
    pool = _pool(pg_runtime)

    async def ask() -> bool:
        return pool.usable()

    assert _run(ask()) is True
    assert _run(ask()) is False  # another loop: it uses worker threads instead


def test_a_direct_statement_runs_on_a_loop_connection(pg_runtime: Runtime) -> None:
    # Compiled for asyncpg's dialect: its parameters in their places, its rows named.
    later = datetime.now(UTC) + timedelta(minutes=5)
    with pg_runtime.engine.begin() as connection:
        connection.execute(
            insert(_WITHDRAWN), [{"kind": "jti", "value": "kept", "expires_at": later}]
        )
    pool = _pool(pg_runtime)
    statement = DirectStatement(
        select(_WITHDRAWN.c.value, _WITHDRAWN.c.expires_at).where(
            _WITHDRAWN.c.expires_at > bindparam("after"), _WITHDRAWN.c.value == bindparam("jti")
        )
    )

    async def run() -> tuple[Any, Any]:
        assert pool.usable()
        async with pool.connection() as connection:
            found = await statement.first_on(
                connection, pool.dialect, {"jti": "kept", "after": datetime.now(UTC)}
            )
            none = await statement.first_on(
                connection, pool.dialect, {"jti": "kept", "after": later}
            )
        await pool.close()
        return found, none

    found, none = _run(run())
    assert (found.value, found.expires_at) == ("kept", later) and none is None


def test_libpqs_connect_timeout_in_the_url_is_taken_not_sent_to_the_server(
    pg_runtime: Runtime,
) -> None:
    # asyncpg would send an option it does not know to the server as a setting.
    url = pg_runtime.engine.url.update_query_dict({"connect_timeout": "3"})
    pool = LoopConnections(url, 1)

    async def run() -> object:
        assert pool.usable()
        async with pool.connection() as connection:
            one = await connection.fetchval("SELECT 1")
        await pool.close()
        return one

    assert _run(run()) == 1


def test_connections_are_handed_out_in_turn(pg_runtime: Runtime) -> None:
    # A slot freed goes to the task that has waited longest, even when a newcomer is
    # ready to run first: letting newcomers take it left some requests waiting many turns.
    pool = _pool(pg_runtime)
    served: list[str] = []

    async def use(name: str) -> None:
        async with pool.connection():
            served.append(name)

    async def in_turn() -> list[str]:
        assert pool.usable()
        async with pool.connection():
            waiting = asyncio.ensure_future(use("waiting"))
            await asyncio.sleep(0.05)
            newcomer = asyncio.ensure_future(use("newcomer"))  # runs before the waiter wakes
        await asyncio.wait_for(asyncio.gather(waiting, newcomer), 5)
        await pool.close()
        return served

    assert _run(in_turn()) == ["waiting", "newcomer"]


def test_a_task_cancelled_while_waiting_gives_up_its_turn(pg_runtime: Runtime) -> None:
    pool = _pool(pg_runtime)

    async def use() -> int:
        async with pool.connection() as connection:
            return int(await connection.fetchval("SELECT 1"))

    async def cancelled(handed_over: bool) -> int:
        assert pool.usable()
        async with pool.connection():
            gave_up = asyncio.ensure_future(use())
            await asyncio.sleep(0.05)
            if not handed_over:
                gave_up.cancel()
        if handed_over:
            gave_up.cancel()  # its turn came, but it is cancelled before it runs
        with contextlib.suppress(asyncio.CancelledError):
            await gave_up
        # The slot is not kept for the task that left: the next one gets it.
        one = await asyncio.wait_for(use(), 5)
        await pool.close()
        return one

    assert _run(cancelled(handed_over=False)) == 1
    pool = _pool(pg_runtime)
    assert _run(cancelled(handed_over=True)) == 1


def test_queued_users_do_not_dial_a_database_that_just_failed(
    pg_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = make_url("postgresql+psycopg://carebridge@127.0.0.1:9/test")
    pool = LoopConnections(url, 1)
    dialled: list[float] = []
    connect = LoopConnections._connect

    async def counted(self: LoopConnections) -> Any:
        dialled.append(time.monotonic())
        return await connect(self)

    monkeypatch.setattr(LoopConnections, "_connect", counted)

    async def use() -> None:
        async with pool.connection():
            pass

    async def queued() -> list[BaseException | None]:
        assert pool.usable()
        # Three at once: the first dials and fails; the two queued behind it do not dial.
        results = await asyncio.gather(use(), use(), use(), return_exceptions=True)
        await pool.close()
        return [result if isinstance(result, BaseException) else None for result in results]

    results = _run(queued())
    assert len(dialled) == 1
    assert all(isinstance(result, DATABASE_ERRORS) for result in results)


def test_no_one_waits_for_a_connection_longer_than_the_limit(pg_runtime: Runtime) -> None:
    # The limit is the web budget's.
    pool = LoopConnections(pg_runtime.engine.url, 1, Budget("web", 0.2))

    async def use() -> None:
        async with pool.connection():
            pass

    async def held() -> float:
        assert pool.usable()
        async with pool.connection():
            started = time.monotonic()
            with pytest.raises(DATABASE_ERRORS):
                await use()
            waited = time.monotonic() - started
        await asyncio.wait_for(use(), 5)  # the slot still serves
        await pool.close()
        return waited

    assert 0.15 < _run(held()) < 2


def test_closing_releases_the_waiting_and_refuses_newcomers(pg_runtime: Runtime) -> None:
    pool = _pool(pg_runtime)

    async def use() -> None:
        async with pool.connection():
            pass

    async def closing() -> tuple[bool, bool]:
        assert pool.usable()
        async with pool.connection() as connection:
            waiting = asyncio.ensure_future(use())
            await asyncio.sleep(0.05)
            await pool.close()
            with pytest.raises(ConnectionAbortedError):
                await asyncio.wait_for(waiting, 2)
            with pytest.raises(ConnectionAbortedError):
                await use()
        # Handed back after the close: closed, not kept.
        return connection.is_closed(), pool.usable()

    assert _run(closing()) == (True, False)
