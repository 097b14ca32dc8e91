"""The real app served by uvicorn on a free loopback port, for tests that need a live
server (browsers, relying parties, schemathesis): one way to start and stop it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from carebridge.app import create_app
from carebridge.runtime import Runtime
from carebridge.settings import Settings


@dataclass(frozen=True)
class LiveApp:
    url: str  # the issuer: http://127.0.0.1:<port>
    runtime: Runtime


def free_socket() -> socket.socket:
    # The port comes first: the issuer (and so the app's allowed host) names it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def serve(settings: Settings, port_socket: socket.socket) -> Iterator[LiveApp]:
    """uvicorn in a background thread on ``port_socket``, until the block ends."""
    runtime = Runtime.build(settings)
    config = uvicorn.Config(create_app(runtime), log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [port_socket]}, daemon=True)
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
        port_socket.close()
        runtime.close()


@contextlib.contextmanager
def live_app(tmp_path: Path, database_url: str) -> Iterator[LiveApp]:
    """The app on ``database_url``, its data directory under ``tmp_path``."""
    sock = free_socket()
    settings = Settings(
        issuer=f"http://127.0.0.1:{sock.getsockname()[1]}",
        data_dir=tmp_path / "data",
        database_url=database_url,
    )
    with serve(settings, sock) as app:
        yield app
