"""Fixtures for the OpenID Connect provider tests (every test runs on SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import live_server
from tests.live_server import LiveApp


@pytest.fixture
def live_app(tmp_path: Path, database_url: str) -> Iterator[LiveApp]:
    """The real app under uvicorn on a free loopback port (as tests/browser runs it)."""
    with live_server.live_app(tmp_path, database_url) as app:
        yield app
