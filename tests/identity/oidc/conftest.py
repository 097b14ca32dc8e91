"""Fixtures for the OpenID Connect provider tests (every test runs on SQLite and PostgreSQL)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from carebridge.app import create_app
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from tests.browser.harness import LiveApp


@pytest.fixture
def live_app(tmp_path: Path, database_url: str) -> Iterator[LiveApp]:
    """The real app under uvicorn on a free loopback port (as tests/browser runs it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(
        issuer=f"http://127.0.0.1:{port}", data_dir=tmp_path / "data", database_url=database_url
    )
    runtime = Runtime.build(settings)
    config = uvicorn.Config(create_app(runtime), log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped before it started serving"
        assert time.monotonic() < deadline, "uvicorn did not start within 15 s"
        time.sleep(0.05)
    try:
        yield LiveApp(settings.issuer, runtime)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        runtime.close()
