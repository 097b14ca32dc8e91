"""Fixtures shared by the whole suite.

Every test that asks for ``database_url`` runs twice: on SQLite and on PostgreSQL, each
time on a fresh database cloned from one migrated at the start of the session.

Real parts the suite needs go through ``realparts.require``: on a developer's machine a
missing part skips its tests with the reason, under CI (``CI=true``) it fails them.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from carebridge import migrate
from carebridge.app import create_app
from carebridge.db import make_engine
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from tests.realparts import require
from tests.smtp_server import SmtpServer
from tests.smtp_server import start as start_smtp_server

POSTGRES_URL = os.environ.get(
    "CAREBRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # serve and worker configure the root logger for real; the next test gets it back.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests set exactly the CAREBRIDGE_* variables they mean to.
    for name in list(os.environ):
        if name.startswith("CAREBRIDGE_") and not name.startswith("CAREBRIDGE_TEST_"):
            monkeypatch.delenv(name)


# PostgreSQL


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as exc:
        engine.dispose()
        require("PostgreSQL", False, f"{make_url(POSTGRES_URL).host}: {exc.orig}")
    yield engine
    engine.dispose()


def _postgres_url(database: str) -> str:
    return make_url(POSTGRES_URL).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_template(postgres_admin: Engine) -> Iterator[str]:
    name = f"cb_template_{os.getpid()}"
    with postgres_admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(_postgres_url(name))
    migrate.upgrade(engine)
    engine.dispose()
    yield name
    with postgres_admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_database(postgres_admin: Engine, postgres_template: str) -> Iterator[str]:
    name = f"cb_test_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'))
    yield _postgres_url(name)
    with postgres_admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_postgres_database(postgres_admin: Engine) -> Iterator[str]:
    name = f"cb_empty_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield _postgres_url(name)
    with postgres_admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# SQLite


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "carebridge.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    # Closing the last connection folds the WAL into the file: a plain copy is whole.
    engine.dispose()
    return path


# Either backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of the test's backend."""
    if backend == "postgresql":
        return str(request.getfixturevalue("postgres_database"))
    path = tmp_path / "carebridge.db"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    return f"sqlite:///{path}"


@pytest.fixture
def empty_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of the test's backend with no schema at all."""
    if backend == "postgresql":
        return str(request.getfixturevalue("empty_postgres_database"))
    return f"sqlite:///{tmp_path / 'empty.db'}"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.build(settings)
    yield rt
    rt.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Path:
    """Point the CLI at this test's database and data directory; returns the data dir."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("CAREBRIDGE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CAREBRIDGE_DATABASE_URL", database_url)
    return data_dir


# Peers that fail: a port nobody answers on, and one that accepts and never answers.


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: a peer (upstream provider, Twilio) that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers: a peer that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


# A real SMTP server (aiosmtpd): what carebridge's e-mails arrive at (tests/smtp_server.py).


@pytest.fixture
def smtp_servers(tmp_path: Path) -> Iterator[Callable[..., SmtpServer]]:
    """Starts test SMTP servers of any variant (smtp_server.start's arguments); each is
    stopped at the end of the test."""
    started: list[SmtpServer] = []

    def start(**kwargs: Any) -> SmtpServer:
        server = start_smtp_server(tmp_path / f"smtp{len(started)}", **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def smtp_server(smtp_servers: Callable[..., SmtpServer]) -> SmtpServer:
    """A plain loopback SMTP server: ``.url`` to send to, ``.messages`` received, and
    ``.settings()`` for carebridge's Settings (email_backend=smtp, smtp_url)."""
    return smtp_servers()


@pytest.fixture
def smtp_settings(settings: Settings, smtp_server: SmtpServer) -> Settings:
    """The test's settings, sending e-mail to ``smtp_server``."""
    return Settings(
        data_dir=settings.data_dir, database_url=settings.database_url, **smtp_server.settings()
    )
