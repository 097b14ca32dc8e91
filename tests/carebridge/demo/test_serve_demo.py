"""``carebridge serve --demo``: seeds, prints the walk-through, runs the worker alongside."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from carebridge.cli import main


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def record(app: str, **kwargs: Any) -> None:
        loopback = os.environ.get("CAREBRIDGE_WEBHOOK_ALLOW_LOOPBACK")
        calls.append(
            {"app": app, "demo": os.environ.get("CAREBRIDGE_DEMO"), "loopback": loopback, **kwargs}
        )

    monkeypatch.setattr("carebridge.cli.serve.uvicorn.run", record)
    monkeypatch.setattr("carebridge.cli.serve.configure_logging", lambda *args: None)
    # serve --demo tells its uvicorn workers through the environment; undo it afterwards.
    monkeypatch.delenv("CAREBRIDGE_DEMO", raising=False)
    monkeypatch.delenv("CAREBRIDGE_ISSUER", raising=False)
    monkeypatch.delenv("CAREBRIDGE_WEBHOOK_ALLOW_LOOPBACK", raising=False)
    return calls


def test_serve_demo_seeds_and_prints_how_to_walk_through(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    uvicorn_calls: list[dict[str, Any]],
) -> None:
    monkeypatch.setenv("CAREBRIDGE_DATA_DIR", str(tmp_path / "data"))
    assert main(["serve", "--demo", "--port", "8123"]) == 0
    out = capsys.readouterr().out
    assert "http://127.0.0.1:8123/demo/provider/" in out
    assert "1980-01-01" in out and "synthetic data only" in out
    assert [call["demo"] for call in uvicorn_calls] == ["true"]
    # The demo provider app's webhook receiver is this server, on loopback.
    assert [call["loopback"] for call in uvicorn_calls] == ["true"]
    assert "hears of new threads by webhook" in out
    assert (tmp_path / "data" / "demo-provider-app.json").exists()


def test_serve_demo_in_production_is_refused_before_anything_is_made(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    uvicorn_calls: list[dict[str, Any]],
) -> None:
    monkeypatch.setenv("CAREBRIDGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CAREBRIDGE_ENV", "production")
    assert main(["serve", "--demo"]) == 2
    err = capsys.readouterr().err
    # The first unmet production requirement is named; the demo's own refusal is
    # checked in test_seed.py (production_problems lists CAREBRIDGE_DEMO too).
    assert err.startswith("carebridge: error: refusing to start:")
    assert uvicorn_calls == []
    assert not (tmp_path / "data").exists()
