"""Activation codes, issue 4's loose ends: every failed redemption does the same work (the
same statements, about the same time) and each outcome is counted in a metric (both
backends)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, update
from starlette.testclient import TestClient

from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity.models import RosterMember

from .roster_helpers import import_roster, signed_in_account
from .test_activation import FAILURES, ZEB_DOB, issue, redeem


def _malformed(runtime: Runtime, patients: dict[str, str]) -> tuple[str, str]:
    return "not a code at all", ZEB_DOB


KINDS: dict[str, Callable[[Runtime, dict[str, str]], tuple[str, str]]] = {
    **FAILURES,
    "malformed code": _malformed,
}


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # The redemptions' statements only: no audit chainer linking records beside them (it
    # runs every second on PostgreSQL, and a slow machine lets it land mid-request).
    return Settings(data_dir=tmp_path / "data", database_url=database_url, audit_chain_seconds=60)


@pytest.fixture
def patients(runtime: Runtime, tmp_path: Path) -> dict[str, str]:
    return import_roster(runtime, tmp_path)


def arranged(runtime: Runtime, patients: dict[str, str], name: str) -> tuple[str, str]:
    with transaction(runtime.sessions) as db:
        db.execute(update(RosterMember).values(eligible=True))
    return KINDS[name](runtime, patients)


@contextmanager
def statements(runtime: Runtime) -> Iterator[list[str]]:
    """The SQL statements (their text, never their values) run while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement.split(maxsplit=1)[0])

    event.listen(runtime.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(runtime.engine, "before_cursor_execute", record)


def test_every_failure_runs_the_same_statements(
    client: TestClient, runtime: Runtime, patients: dict[str, str]
) -> None:
    shapes: dict[str, list[str]] = {}
    for name in KINDS:
        code, dob = arranged(runtime, patients, name)
        _, headers = signed_in_account(runtime)
        with statements(runtime) as seen:
            response = redeem(client, headers, code, dob)
        assert response.status_code == 400, name
        # The session lookup of the request itself comes first: the same for everyone.
        shapes[name] = seen
    first = shapes["unknown code"]
    assert first, "no statement seen"
    assert {name: shape for name, shape in shapes.items() if shape != first} == {}


def test_failures_take_about_the_same_time(
    client: TestClient, runtime: Runtime, patients: dict[str, str]
) -> None:
    def timed(name: str) -> float:
        samples = []
        for _ in range(3):
            code, dob = arranged(runtime, patients, name)
            _, headers = signed_in_account(runtime)
            started = time.perf_counter()
            redeem(client, headers, code, dob)
            samples.append(time.perf_counter() - started)
        return min(samples)

    times = {name: timed(name) for name in ("malformed code", "unknown code", "wrong dob", "used")}
    # Loose: the same hashes and statements on every path, so within noise of each other.
    assert max(times.values()) < 3 * min(times.values()) + 0.05, times


def count(outcome: str) -> float:
    value = REGISTRY.get_sample_value("carebridge_activation_total", {"outcome": outcome})
    return value or 0.0


def test_each_outcome_is_counted(
    client: TestClient, runtime: Runtime, patients: dict[str, str]
) -> None:
    before = {outcome: count(outcome) for outcome in ("linked", "failed", "locked")}
    _, headers = signed_in_account(runtime)
    for _ in range(5):
        assert redeem(client, headers, "AAAA-BBBB-CCCC", ZEB_DOB).status_code == 400
    assert redeem(client, headers, "AAAA-BBBB-CCCC", ZEB_DOB).status_code == 429
    _, other = signed_in_account(runtime)
    assert redeem(client, other, issue(runtime, patients["zeb"]), ZEB_DOB).status_code == 200
    assert redeem(client, other, "AAAA-BBBB-CCCC", ZEB_DOB).status_code == 409  # not counted
    after = {outcome: count(outcome) for outcome in before}
    assert {k: after[k] - before[k] for k in after} == {"linked": 1, "failed": 5, "locked": 1}
    exposition = client.get("/metrics").text
    assert 'carebridge_activation_total{outcome="failed"}' in exposition
