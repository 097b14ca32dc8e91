"""A database that stops answering (issue 17, finding 7).

A private PostgreSQL (tests/private_postgres.py) is frozen with SIGSTOP while requests
are in flight: the kernel still accepts connections and acknowledges bytes, nothing
comes back, and the server's own statement_timeout is frozen with it. Every request
then answers within the web budget (503 with Retry-After), /readyz within about a
second, and once the server runs again the pool reconnects and requests succeed, with
no restart. A locked SQLite database ends the same way. The worker and the CLI get
their own, longer budgets.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from carebridge import migrate
from carebridge.app import create_app
from carebridge.db import (
    CLIENT_GRACE_SECONDS,
    Budget,
    make_engine,
    make_sessionmaker,
    transaction,
    unavailable,
)
from carebridge.db import deadlines as db_deadlines
from carebridge.db import engine as db_engine
from carebridge.db.deadlines import TICK_SECONDS
from carebridge.http import health
from carebridge.http.problems import RETRY_AFTER_SECONDS
from carebridge.runtime import Runtime
from carebridge.settings import Role, Settings
from identity import sessions
from tests.identity import factories
from tests.identity.oidc import helpers
from tests.messaging.conftest import build_world
from tests.private_postgres import PrivatePostgres
from tests.realparts import require

# The web budget of the apps under test, and what "within the budget" allows: the
# budget, the client's grace after it, the deadline thread's tick, and a busy machine's
# slack (two cores, several suites at once).
BUDGET = 1.0
WITHIN = BUDGET + CLIENT_GRACE_SECONDS + TICK_SECONDS + 1.5
JSON = {"accept": "application/json"}
HTML = {"accept": "text/html"}


def _bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
    bindir = Path(found.stdout.strip())
    return bindir if (bindir / "initdb").exists() else None


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A server of our own, with a migrated template database: the shared one is never
    frozen."""
    bindir = _bindir()
    require("PostgreSQL server binaries", bindir is not None, "initdb not found via pg_config")
    assert bindir is not None
    server = PrivatePostgres(bindir)
    try:
        server.start()
        admin = create_engine(server.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text('CREATE DATABASE "template_cb"'))
        admin.dispose()
        engine = make_engine(server.url("template_cb").render_as_string(hide_password=False))
        migrate.upgrade(engine)
        engine.dispose()
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_database(private_postgres: PrivatePostgres) -> Iterator[str]:
    name = f"cb_{uuid.uuid4().hex[:12]}"
    admin = create_engine(private_postgres.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "template_cb"'))
    yield private_postgres.url(name).render_as_string(hide_password=False)
    private_postgres.thaw()  # whatever the test did
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@dataclass
class Served:
    url: str
    runtime: Runtime
    server: PrivatePostgres

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=15, follow_redirects=False)


@pytest.fixture
def served(
    private_postgres: PrivatePostgres,
    private_database: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Served]:
    """The real app under uvicorn, on the private server, with a 1 s web budget (or the
    one the test gives as the fixture's parameter)."""
    budget = float(getattr(request, "param", BUDGET))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = Settings(
        issuer=issuer,
        data_dir=tmp_path / "data",
        database_url=private_database,
        db_timeout_web_seconds=budget,
        client_cache_seconds=60,
    )
    runtime = Runtime.build(settings)
    server = uvicorn.Server(uvicorn.Config(create_app(runtime), log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Served(issuer, runtime, private_postgres)
    finally:
        private_postgres.thaw()
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        runtime.close()


@dataclass(frozen=True)
class Answer:
    status: int
    seconds: float
    headers: httpx.Headers
    text: str


def _timed(call: Callable[[], httpx.Response]) -> Answer:
    started = time.monotonic()
    response = call()
    return Answer(response.status_code, time.monotonic() - started, response.headers, response.text)


def _signed_in(runtime: Runtime) -> dict[str, str]:
    """The cookie of a person past MFA: /account then reads the database three times."""
    account_id = factories.account(runtime)
    token = factories.session(runtime, account_id, level=2)
    return {"cookie": f"{sessions.cookie_name(runtime)}={token}"}


def _in_parallel(calls: list[Callable[[], httpx.Response]]) -> list[Answer]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(_timed, calls))


def test_stalled_database_request_answers_503_with_retry_after_within_budget(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    cookie = _signed_in(served.runtime)
    with served.client() as client:
        # Several pooled connections, each used a moment ago (so not pinged first).
        warm = _in_parallel([lambda: client.get("/account", headers=cookie)] * 4)
        assert {answer.status for answer in warm} == {200}
        served.server.freeze()
        with caplog.at_level(logging.INFO):
            answers = _in_parallel(
                [
                    lambda accept=accept: client.get("/account", headers={**cookie, **accept})
                    for accept in (JSON, HTML) * 4
                ]
            )
    for answer in answers:
        assert answer.status == 503, answer.text[:300]
        assert answer.seconds < WITHIN, answer.seconds
        assert answer.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    problems = [a for a in answers if a.headers["content-type"] == "application/problem+json"]
    pages = [a for a in answers if a.headers["content-type"].startswith("text/html")]
    assert len(problems) == len(pages) == 4
    assert "briefly unavailable" in pages[0].text
    # One line per refusal, no traceback: a driver's quotes the SQL and its parameters.
    assert not [record for record in caplog.records if record.exc_info]
    assert "unhandled error" not in caplog.text
    assert "database unavailable, answered 503" in caplog.text
    assert cookie["cookie"].split("=", 1)[1] not in caplog.text


# The default web budget: a probe answers within its own second whatever the budget.
@pytest.mark.parametrize("served", [5.0], indirect=True)
def test_readyz_answers_503_within_two_seconds_when_database_stalls(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "FRESH_FOR", 0.0)  # every probe checks
    cookie = _signed_in(served.runtime)
    with served.client() as client:
        assert client.get("/readyz").status_code == 200
        served.server.freeze()
        # Probes, some at once, while requests hold the pool's connections.
        calls: list[Callable[[], httpx.Response]] = [lambda: client.get("/readyz")] * 4
        calls += [lambda: client.get("/account", headers=cookie)] * 4
        answers = _in_parallel(calls)
        later = [_timed(lambda: client.get("/readyz")) for _ in range(3)]
    for answer in answers[:4] + later:
        assert answer.status == 503, answer.text[:300]
        assert answer.seconds < 2.0, answer.seconds
        # Not answering within the probe's second, or the check's connection timed out.
        checks = json.loads(answer.text)["checks"]
        assert checks["database"] in ("timeout", "unreachable"), checks


def test_pool_recovers_after_database_resumes(served: Served) -> None:
    cookie = _signed_in(served.runtime)
    with served.client() as client:
        assert {
            a.status for a in _in_parallel([lambda: client.get("/account", headers=cookie)] * 4)
        } == {200}
        served.server.freeze()
        stalled = _in_parallel([lambda: client.get("/account", headers=cookie)] * 4)
        assert {answer.status for answer in stalled} == {503}
        served.server.thaw()
        # No restart, no retry: every request from now on is served.
        after = _in_parallel([lambda: client.get("/account", headers=cookie)] * 6)
        after += [_timed(lambda: client.get("/account", headers=cookie)) for _ in range(3)]
        time.sleep(health.FRESH_FOR)
        ready = _timed(lambda: client.get("/readyz"))
    assert [answer.status for answer in after] == [200] * 9
    assert ready.status == 200, ready.text


def test_token_requests_on_the_event_loop_answer_503_within_budget_when_database_stalls(
    served: Served,
) -> None:
    registered = helpers.register(served.runtime)
    person = helpers.person(served.runtime, verified=False)
    cookie = {sessions.cookie_name(served.runtime): person.session_token}
    with served.client() as client:
        client.cookies.update(cookie)
        verifier, challenge = helpers.pkce()
        answer = helpers.approve(client, helpers.authorization_params(registered, challenge))
        first = helpers.exchange(client, registered, answer["code"][0], verifier)
        assert first.status_code == 200, first.text
        client.cookies.clear()

        def refresh(token: str) -> httpx.Response:
            return client.post(
                "/oauth2/token",
                data={"grant_type": "refresh_token", "refresh_token": token},
                auth=helpers.basic(registered),
            )

        # A refresh answered on the event loop (the client is cached, the subject known).
        second = refresh(first.json()["refresh_token"])
        assert second.status_code == 200, second.text
        token = second.json()["refresh_token"]
        served.server.freeze()
        stalled = _in_parallel([lambda: refresh(token)] * 3)
        served.server.thaw()
        # Nothing was written while it stalled: the token is still good, once.
        resumed = refresh(token)
    for answer in stalled:
        assert answer.status == 503, answer.text[:300]
        assert answer.seconds < WITHIN, answer.seconds
        assert answer.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
        assert token not in answer.text
    assert resumed.status_code == 200, resumed.text


def test_locked_sqlite_database_answers_503_within_budget(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", db_timeout_web_seconds=BUDGET)
    runtime = Runtime.build(settings)
    migrate.upgrade(runtime.engine)
    cookie = _signed_in(runtime)
    holder = create_engine(settings.effective_database_url)
    try:
        with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
            assert client.get("/account", headers=cookie).status_code == 200
            with holder.connect() as held:
                # Another process's long write (a CLI import) holds the database's lock.
                held.exec_driver_sql("BEGIN IMMEDIATE")
                locked = _timed(lambda: client.get("/account", headers={**cookie, **JSON}))
                time.sleep(health.FRESH_FOR)
                probe = _timed(lambda: client.get("/readyz"))
                held.exec_driver_sql("ROLLBACK")
            released = client.get("/account", headers=cookie)
    finally:
        holder.dispose()
        runtime.close()
    assert locked.status == 503, locked.text[:300]
    assert locked.seconds < BUDGET + 1.5, locked.seconds
    assert locked.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert probe.status == 503 and probe.seconds < 2.0, (probe.status, probe.seconds)
    assert released.status_code == 200


# Each role's budget


def _budget_in_effect(runtime: Runtime) -> tuple[int, str]:
    """The statement (or lock) timeout its sessions run with, in ms, and their name."""
    with runtime.engine.connect() as connection:
        if runtime.settings.uses_sqlite:
            return int(connection.exec_driver_sql("PRAGMA busy_timeout").scalar_one()), ""
        row = connection.execute(
            text(
                "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
                " current_setting('application_name')"
            )
        ).one()
    statement = _ms(row[0])
    assert _ms(row[1]) == statement  # both are the role's budget
    return statement, str(row[2])


def _ms(value: str) -> int:
    units = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000}
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit) and value[: -len(unit)].isdigit():
            return int(value[: -len(unit)]) * units[unit]
    return int(value)


@pytest.mark.parametrize(
    ("role", "expected"), [(Role.WEB, 5_000), (Role.WORKER, 60_000), (Role.CLI, 900_000)]
)
def test_each_role_gets_its_own_database_budget(
    settings: Settings, role: Role, expected: int
) -> None:
    runtime = Runtime.build(settings, role)
    try:
        timeout, name = _budget_in_effect(runtime)
    finally:
        runtime.close()
    assert timeout == expected
    if not settings.uses_sqlite:
        assert name == f"carebridge-{role.value}"


def test_cli_commands_run_with_the_cli_budget(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every command builds its runtime here; a roster import of a million rows takes
    # 95 s in all, and never meets the web budget's few seconds.
    from carebridge.cli import common  # noqa: PLC0415

    monkeypatch.setenv("CAREBRIDGE_DB_TIMEOUT_CLI_SECONDS", "120")
    runtime = common.runtime()
    try:
        assert runtime.role is Role.CLI
        assert _budget_in_effect(runtime)[0] == 120_000
    finally:
        runtime.close()


def test_worker_runs_with_the_worker_budget(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from carebridge import worker  # noqa: PLC0415
    from carebridge.cli import main  # noqa: PLC0415
    from carebridge.cli import worker as worker_command  # noqa: PLC0415

    seen: list[int] = []
    job = worker.Job("budget", 1.0, lambda runtime: seen.append(_budget_in_effect(runtime)[0]))
    monkeypatch.setattr(worker_command, "JOBS", (job,))
    monkeypatch.setenv("CAREBRIDGE_DB_TIMEOUT_WORKER_SECONDS", "45")
    assert main(["worker", "--once"]) == 0
    assert seen == [45_000]


def test_a_statement_past_the_budget_is_a_503_kind_of_failure_not_a_hang(
    postgres_database: str,
) -> None:
    # The server, still running, ends it at the budget (statement_timeout), and the
    # connection stays in the pool; a CLI budget lets the same statement finish.
    web = make_engine(postgres_database, Budget("web", 0.5))
    cli = make_engine(postgres_database, Budget("cli", 5.0))
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError) as raised, web.connect() as connection:
            connection.execute(text("SELECT pg_sleep(2)"))
        assert time.monotonic() - started < 1.5
        assert unavailable(raised.value) and not raised.value.connection_invalidated
        with cli.connect() as connection:
            assert connection.execute(text("SELECT pg_sleep(1.2), 1")).one()[1] == 1
    finally:
        web.dispose()
        cli.dispose()


# Every kind of wait, on a frozen server


@pytest.mark.parametrize("kind", ["statement", "commit", "copy", "server-side cursor"])
def test_every_wait_on_a_frozen_server_ends_within_the_budget(
    private_postgres: PrivatePostgres, private_database: str, kind: str
) -> None:
    # The roster import's COPY, a commit, the audit check's server-side cursor: each
    # waits on the server outside any statement SQLAlchemy sees.
    engine = make_engine(private_database, Budget("cli", BUDGET))
    try:
        with engine.connect() as connection:
            raw = connection.connection.driver_connection
            assert raw is not None
            raw.execute("CREATE TEMPORARY TABLE copied (n integer)")
            server_cursor = raw.cursor(name="audit")
            server_cursor.execute("SELECT generate_series(1, 10)")
            waits: dict[str, Callable[[], object]] = {
                "statement": lambda: raw.execute("SELECT 1"),
                "commit": raw.commit,
                "copy": lambda: _copy_a_row(raw),
                "server-side cursor": lambda: server_cursor.fetchmany(5),
            }
            private_postgres.freeze()
            outcome, waited = _bounded(waits[kind], private_postgres)
            connection.invalidate()
    finally:
        private_postgres.thaw()
        engine.dispose()
    assert isinstance(outcome, psycopg.OperationalError), outcome
    assert waited < WITHIN, waited


def _bounded(call: Callable[[], object], server: PrivatePostgres) -> tuple[object, float]:
    """What ``call`` raised (or returned) and how long it took; a call still waiting
    after a generous while is let go by thawing the server, so a regression fails the
    test instead of hanging it."""
    outcome: list[object] = []
    started = time.monotonic()

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # noqa: BLE001  (the outcome under test)
            outcome.append(exc)
        outcome.append(time.monotonic() - started)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WITHIN + 5)
    if thread.is_alive():
        server.thaw()
        thread.join(15)
    return outcome[0], float(outcome[1])  # type: ignore[arg-type]


def _copy_a_row(raw: psycopg.Connection[object]) -> None:
    with raw.cursor() as cursor, cursor.copy("COPY copied FROM STDIN") as copy:
        copy.write_row((1,))


def test_a_request_that_finds_the_pool_exhausted_gives_up_within_the_budget(
    postgres_database: str,
) -> None:
    engine = make_engine(postgres_database, Budget("web", 0.5))
    held = [engine.connect() for _ in range(20)]  # the pool and its overflow, all busy
    try:
        started = time.monotonic()
        with pytest.raises(PoolTimeoutError) as raised:
            engine.connect()
        assert time.monotonic() - started < 1.5
        assert unavailable(raised.value)
    finally:
        for connection in held:
            connection.close()
        engine.dispose()


def test_a_pooled_connection_checked_on_a_frozen_server_fails_without_reconnecting(
    private_postgres: PrivatePostgres, private_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An idle connection is pinged before use; when the ping runs out of time the request
    # fails then, instead of also waiting out a reconnection to the same frozen server.
    monkeypatch.setattr(db_engine, "PING_AFTER_IDLE_SECONDS", 0.0)
    engine = make_engine(private_database, Budget("web", BUDGET))
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        private_postgres.freeze()
        outcome, waited = _bounded(engine.connect, private_postgres)
    finally:
        private_postgres.thaw()
        engine.dispose()
    assert isinstance(outcome, BaseException) and unavailable(outcome), outcome
    # One wait (the ping's), not that and a connect timeout (2 s) after it.
    assert waited < BUDGET + CLIENT_GRACE_SECONDS + 1.0, waited


# A COMMIT whose answer never came


def test_a_commit_cut_off_by_the_deadline_answers_500_not_a_retry_that_posts_twice(
    served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The server stops as a message's COMMIT goes out; it runs on later and commits. A
    # 503 "try again" would have the client post the message (and its notification)
    # twice: the answer is a 500 that says to check first.
    world = build_world(served.runtime, tmp_path)
    armed = threading.Event()

    def freeze_as_a_write_commits(connection: Connection) -> None:
        # The first transaction after arming that wrote anything: the message's.
        wrote = connection.exec_driver_sql("SELECT txid_current_if_assigned()").scalar()
        if armed.is_set() and wrote is not None:
            armed.clear()
            served.server.freeze()

    event.listen(served.runtime.engine, "commit", freeze_as_a_write_commits)
    try:
        with served.client() as client:
            created = client.post(
                "/api/v1/messaging/threads",
                json={"patient_id": world.patients["zeb"], "subject": "Visit", "body": "Hi."},
                headers=world.app(),
            )
            assert created.status_code == 201, created.text
            thread_id = created.json()["thread"]["id"]
            armed.set()
            with caplog.at_level(logging.INFO):
                answer = _timed(
                    lambda: client.post(
                        f"/api/v1/messaging/threads/{thread_id}/messages",
                        json={"body": "See you on Tuesday."},
                        headers={**world.app(), **JSON},
                    )
                )
            served.server.thaw()
    finally:
        event.remove(served.runtime.engine, "commit", freeze_as_a_write_commits)
    assert answer.status == 500, answer.text[:300]
    assert "retry-after" not in answer.headers
    assert answer.seconds < WITHIN, answer.seconds
    assert "Check before you try again" in json.loads(answer.text)["detail"]
    assert "a write's outcome is unknown" in caplog.text
    assert "answered 503" not in caplog.text
    assert not [record for record in caplog.records if record.exc_info]
    # It did commit once the server ran on.
    deadline = time.monotonic() + 10
    while _messages(served.runtime, thread_id) < 2:
        assert time.monotonic() < deadline, "the cut-off commit never landed"
        time.sleep(0.1)


def _messages(runtime: Runtime, thread_id: str) -> int:
    with runtime.engine.connect() as connection:
        query = text("SELECT count(*) FROM message WHERE thread_id = :thread")
        return int(connection.execute(query, {"thread": thread_id}).scalar_one())


# The deadline thread


def _direct(url: str, limit: float) -> db_deadlines.WatchedConnection:
    """A watched connection with only the client's deadline (no statement_timeout): what
    ends its waits is the deadline thread alone."""
    parts = make_url(url)
    return db_deadlines.connect(
        limit, host=parts.host, port=parts.port, dbname=parts.database, user=parts.username
    )


def _run_bounded(call: Callable[[], object]) -> tuple[object, float]:
    """What ``call`` raised (or returned), and how long it took."""
    started = time.monotonic()
    try:
        outcome: object = call()
    except Exception as exc:  # noqa: BLE001  (the outcome under test)
        outcome = exc
    return outcome, time.monotonic() - started


@contextmanager
def _out_of_descriptors() -> Iterator[None]:
    """Every file descriptor the process may open is taken, for the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 16, hard))
    taken: list[int] = []
    try:
        with pytest.raises(OSError, match="Too many open files"):  # noqa: PT012
            while True:  # (until it runs out)
                taken.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for descriptor in taken:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_process_out_of_file_descriptors_still_ends_waits_past_their_deadline(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shutting a connection down once took a descriptor (os.dup): EMFILE killed the
    # deadline thread for good, silently, and no wait had a client deadline after.
    monkeypatch.setattr(db_deadlines, "DEADLINES", db_deadlines.Deadlines())  # the test's own
    first, second = _direct(postgres_database, 0.3), _direct(postgres_database, 0.3)
    try:
        with _out_of_descriptors():
            starved, starved_took = _run_bounded(lambda: first.execute("SELECT pg_sleep(3)"))
        later, later_took = _run_bounded(lambda: second.execute("SELECT pg_sleep(3)"))
    finally:
        first.close()
        second.close()
    assert isinstance(starved, psycopg.OperationalError), starved
    assert starved_took < 1.5, starved_took
    assert isinstance(later, psycopg.OperationalError), later
    assert later_took < 1.5, later_took


def test_a_forked_process_ends_its_own_waits_past_their_deadline(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gunicorn --preload, or any fork after the database was used: the child inherited the
    # parent's deadline thread as a stopped thread still on record, so no wait of its own
    # ever had a client deadline.
    monkeypatch.setattr(db_deadlines, "DEADLINES", db_deadlines.Deadlines())
    warm = _direct(postgres_database, 0.3)
    try:
        warm.execute("SELECT 1")  # the parent's deadline thread is running
    finally:
        warm.close()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            mine = _direct(postgres_database, 0.3)
            outcome, took = _run_bounded(lambda: mine.execute("SELECT pg_sleep(3)"))
            code = 0 if isinstance(outcome, psycopg.OperationalError) and took < 1.5 else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 15
    while (done := os.waitpid(child, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        pytest.fail("the forked process hung")
    assert os.waitstatus_to_exitcode(done[1]) == 0, "the forked process's wait ran its course"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_deadline_thread_that_stopped_is_started_again_by_the_next_wait(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever stopped it (here a SystemExit, which no "except Exception" in its loop
    # catches), the next wait to begin starts a new one.
    monkeypatch.setattr(db_deadlines, "DEADLINES", db_deadlines.Deadlines())
    shut_down = db_deadlines._shut_down

    def stop_the_thread(connection: db_deadlines.WatchedConnection) -> None:
        raise SystemExit

    monkeypatch.setattr(db_deadlines, "_shut_down", stop_the_thread)
    first, second = _direct(postgres_database, 0.3), _direct(postgres_database, 0.3)
    try:
        # Its deadline stops the thread instead: the statement runs its course.
        unbounded, _ = _run_bounded(lambda: first.execute("SELECT pg_sleep(1), 1"))
        monkeypatch.setattr(db_deadlines, "_shut_down", shut_down)
        later, later_took = _run_bounded(lambda: second.execute("SELECT pg_sleep(3)"))
    finally:
        first.close()
        second.close()
    assert isinstance(unbounded, psycopg.Cursor), unbounded
    assert isinstance(later, psycopg.OperationalError), later
    assert later_took < 1.5, later_took


def test_a_connection_shut_down_by_its_deadline_as_its_statement_finished_is_not_reused(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The statement's answer came just as its deadline did: answered normally, its
    # connection shut down all the same. The next request must not get that connection
    # (and a 503 for nothing).
    monkeypatch.setattr(db_engine, "PING_AFTER_IDLE_SECONDS", 3600.0)  # no ping to notice it
    engine = make_engine(postgres_database, Budget("web", 5.0))
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            connection.commit()
            raw = connection.connection.driver_connection
            assert isinstance(raw, db_deadlines.WatchedConnection)
            wait = db_deadlines.DEADLINES.start(raw, 0.0)  # its deadline, reached
            deadline = time.monotonic() + 5
            while not raw.ended_by_deadline:
                assert time.monotonic() < deadline, "the deadline thread never came"
                time.sleep(0.01)
            db_deadlines.DEADLINES.end(wait)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


# One transaction's budget, widened


def test_a_widened_transaction_outlives_the_web_budget_and_the_next_has_it_again(
    postgres_database: str,
) -> None:
    web = Budget("web", 0.5)
    engine = make_engine(postgres_database, web)
    sessions = make_sessionmaker(engine)
    try:
        with transaction(sessions, Budget("cli", 10.0)) as session:
            # Past the server's 0.5 s and the client's 1.5 s.
            assert session.execute(text("SELECT pg_sleep(1.7), 1")).one()[1] == 1
            backend = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with transaction(sessions) as session:
            # The same connection, its role's budget again, on both sides.
            assert session.execute(text("SELECT pg_backend_pid()")).scalar_one() == backend
            raw = session.connection().connection.driver_connection
            assert isinstance(raw, db_deadlines.WatchedConnection)
            assert raw.limit == web.client_seconds
            with pytest.raises(OperationalError) as raised:
                session.execute(text("SELECT pg_sleep(1)"))
        assert unavailable(raised.value)
    finally:
        engine.dispose()


# Faults that are not stalls: a 500 with its traceback, never a 503 to retry into


def _app_with(runtime: Runtime, route: Route) -> Starlette:
    app = create_app(runtime)
    app.router.routes.append(route)
    return app


def test_a_deadlock_answers_500_with_its_traceback_not_a_503_to_retry(
    tmp_path: Path, postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Two requests take the same two locks in opposite orders: PostgreSQL ends one
    # (40P01, an OperationalError). A bug to fix, not a database to wait for.
    both_hold_one = threading.Barrier(2, timeout=10)

    def lock_in_order(request: Request) -> Response:
        first, second = int(request.path_params["first"]), int(request.path_params["second"])
        with transaction(request.app.state.runtime.sessions) as session:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": first})
            both_hold_one.wait()
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": second})
        return JSONResponse({})

    runtime = Runtime.build(Settings(data_dir=tmp_path / "data", database_url=postgres_database))
    app = _app_with(runtime, Route("/api/locks/{first}/{second}", lock_in_order))
    try:
        with caplog.at_level(logging.INFO):
            answers = _in_parallel(
                [
                    lambda path=path: TestClient(app, raise_server_exceptions=False).get(path)
                    for path in ("/api/locks/1/2", "/api/locks/2/1")
                ]
            )
    finally:
        runtime.close()
    assert sorted(answer.status for answer in answers) == [200, 500]
    assert not any("retry-after" in answer.headers for answer in answers)
    assert "answered 503" not in caplog.text
    [error] = [record for record in caplog.records if record.getMessage() == "unhandled error"]
    assert error.exc_info is not None and "DeadlockDetected" in repr(error.exc_info[1])


def test_a_program_limit_error_answers_500_not_a_503_to_retry(
    tmp_path: Path, postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    # 54023 too_many_arguments, of class 54 (program limit exceeded): an OperationalError
    # in psycopg, as disk full (53100) and I/O errors (58030) are.
    def over_the_limit(request: Request) -> Response:
        arguments = ", ".join(str(n) for n in range(101))
        with transaction(request.app.state.runtime.sessions) as session:
            session.execute(text(f"SELECT concat({arguments})"))
        return JSONResponse({})

    runtime = Runtime.build(Settings(data_dir=tmp_path / "data", database_url=postgres_database))
    try:
        client = TestClient(
            _app_with(runtime, Route("/api/limit", over_the_limit)), raise_server_exceptions=False
        )
        with caplog.at_level(logging.INFO):
            answer = client.get("/api/limit")
    finally:
        runtime.close()
    assert answer.status_code == 500 and "retry-after" not in answer.headers
    assert "answered 503" not in caplog.text
    [error] = [record for record in caplog.records if record.getMessage() == "unhandled error"]
    assert error.exc_info is not None and "TooManyArguments" in repr(error.exc_info[1])
