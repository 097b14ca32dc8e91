"""Issue 4's brute-force case at the service, where the client address is a parameter: an
attacker cycling SSN last-4 values for a known date of birth from many accounts and many
addresses is stopped long before success (both backends)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from carebridge.runtime import Runtime
from identity import throttle
from identity.flows import verify

from . import factories
from .test_verify import ZEB, link_of, load_roster


@pytest.fixture
def roster(runtime: Runtime, tmp_path: Path) -> None:
    load_roster(runtime, tmp_path)


def test_cycling_ssn4_from_many_accounts_and_addresses_is_stopped(
    runtime: Runtime, roster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The right answer (ZEB's last 4) comes last among the 10,000; every guess comes from
    # a fresh account and a fresh address, so only the DOB's own counter can stop it.
    wrong = [f"{n:04d}" for n in range(10_000) if f"{n:04d}" != ZEB[3]]
    guesses = [*wrong[:200], ZEB[3]]
    # The clock stands still for the burst: an attacker's script is fast.
    now = throttle.utcnow()
    monkeypatch.setattr(throttle, "utcnow", lambda: now)
    results: list[verify.Result] = []
    accounts: list[str] = []
    for number, ssn4 in enumerate(guesses):
        account_id = factories.account(runtime)
        accounts.append(account_id)
        details = verify.VerifyDetails.model_validate(
            {"dob": ZEB[2], "ssn4": ssn4, "last_name": "Guess"}
        )
        host = f"198.51.{number // 250}.{number % 250 + 1}"
        results.append(verify.verify(runtime, account_id, details, client_host=host))
    failed = results.count(verify.Result.FAILED)
    assert failed <= 11, failed  # 10 free per DOB, then doubling delays
    assert set(results[11:]) == {verify.Result.LOCKED}
    assert link_of(runtime, accounts[-1]) is None

    # Waiting out one delay buys one more guess, and the next delay doubles: at most
    # about a dozen guesses a day, against 10,000 possibilities.
    later = now + timedelta(seconds=2)
    monkeypatch.setattr(throttle, "utcnow", lambda: later)
    account_id = factories.account(runtime)
    details = verify.VerifyDetails.model_validate({"dob": ZEB[2], "ssn4": "0000", "last_name": "X"})
    first = verify.verify(runtime, account_id, details, client_host="203.0.113.9")
    assert first is verify.Result.FAILED
    again = verify.verify(runtime, account_id, details, client_host="203.0.113.10")
    assert again is verify.Result.LOCKED


def locks(kind: str) -> float:
    value = REGISTRY.get_sample_value("carebridge_verification_locks_total", {"kind": kind})
    return value or 0.0


def test_locks_are_counted_for_alerting(runtime: Runtime, roster: None) -> None:
    before = {kind: locks(kind) for kind in ("account", "record")}
    guesser = factories.account(runtime)
    for n in range(5):
        details = verify.VerifyDetails.model_validate({"dob": "1950-01-01", "ssn4": f"{n:04d}"})
        verify.verify(runtime, guesser, details, client_host="192.0.2.1")
    # One record (ZEB's DOB and SSN last 4) targeted with wrong last names by ten accounts.
    for number in range(10):
        details = verify.VerifyDetails.model_validate(
            {"dob": ZEB[2], "ssn4": ZEB[3], "last_name": "Wrong"}
        )
        account_id = factories.account(runtime)
        verify.verify(runtime, account_id, details, client_host=f"192.0.2.{number + 10}")
    assert {kind: locks(kind) - before[kind] for kind in before} == {"account": 1, "record": 1}
