"""Guessing at the service, where the client address and the clock are the test's to set
(both backends): an attacker cycling SSN last-4 values for a known date of birth from many
accounts and addresses gets a few checked guesses, then must give last name and ZIP as
well; and nothing they do stops the real patient verifying (issue 17, finding 1)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY
from realparts import require

from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity import throttle
from identity.flows import verify

from . import factories
from .test_verify import TWIN_A, ZEB, link_of, load_roster, patient_of

R = verify.Result


@pytest.fixture
def roster(runtime: Runtime, tmp_path: Path) -> None:
    load_roster(runtime, tmp_path)


class Clock:
    """The throttle's clock, moved by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
        monkeypatch.setattr(throttle, "utcnow", lambda: self.now)

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture(params=["database", "redis"])
def counters_in(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Runtime]:
    """A runtime with a roster whose throttle counters are in the database, or in Redis
    (every key the test writes deleted afterwards: the Redis is shared)."""
    url = "redis://127.0.0.1:6379/0" if request.param == "redis" else None
    if url:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        except redis.RedisError as exc:
            require("Redis", False, f"127.0.0.1:6379: {exc}")
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, redis_url=url or "")
    runtime = Runtime.build(settings)
    written: set[str] = set()
    if url:
        store = throttle.store_for(settings)
        assert isinstance(store, throttle.RedisStore)
        counted = store.attempt

        def attempt(db: object, limits: list[throttle.Limit], now: datetime) -> object:
            written.update(limit.key for limit in limits)
            return counted(db, limits, now)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "attempt", attempt)
    try:
        load_roster(runtime, tmp_path)
        yield runtime
    finally:
        if url and written:
            store.client.delete(*(f"carebridge:throttle:{k}" for k in written))
        runtime.close()


def attempt(runtime: Runtime, account_id: str, host: str, **fields: str) -> verify.Result:
    details = verify.VerifyDetails.model_validate(fields)
    return verify.verify(runtime, account_id, details, client_host=host)


def addresses() -> Iterator[str]:
    """A fresh address for every call: an attacker with a botnet."""
    for n in itertools.count():
        yield f"198.{18 + n // 65_000}.{n // 250 % 260}.{n % 250 + 1}"


def test_cycling_ssn4_from_many_accounts_and_addresses_is_stepped_up_not_locked(
    runtime: Runtime, roster: None, clock: Clock
) -> None:
    # The right answer (ZEB's last 4) comes last among 201; every guess from a fresh
    # account and a fresh address, in a burst, so only the DOB's own counter sees them all.
    wrong = [f"{n:04d}" for n in range(10_000) if f"{n:04d}" != ZEB[3]]
    hosts = addresses()
    results = []
    for ssn4 in [*wrong[:200], ZEB[3]]:
        account_id = factories.account(runtime)
        results.append(attempt(runtime, account_id, next(hosts), dob=ZEB[2], ssn4=ssn4))
    step_up = runtime.settings.verify_step_up_after
    assert results[:step_up] == [R.NEED_TIEBREAKER] * step_up  # checked, and failed
    assert set(results[step_up:]) == {R.NEED_MORE_PROOF}  # the right SSN4 among them
    # Guessing last name and ZIP too: every guess checked, none right, nobody locked.
    for number, (name, zip_code) in enumerate(itertools.product(["Smith", "Quill"], ["02139"])):
        account_id = factories.account(runtime)
        fields = {"dob": ZEB[2], "ssn4": ZEB[3], "last_name": name, "zip": zip_code}
        assert attempt(runtime, account_id, f"203.0.113.{number + 1}", **fields) is R.FAILED
    assert link_of(runtime, account_id) is None


def test_strangers_failures_on_a_birth_date_do_not_stop_its_patient_verifying(
    runtime: Runtime, roster: None, clock: Clock
) -> None:
    # The reported attack: a failed try every 61 minutes, a new throwaway account every
    # four (under an account's own lock), kept ZEB's birth date locked ("contact
    # support") for as long as it ran; here, three days.
    for n in range(80):
        if n % 4 == 0:
            account_id = factories.account(runtime)
        guess = {"dob": ZEB[2], "ssn4": f"{n:04d}", "last_name": "Guess", "zip": "99999"}
        attempt(runtime, account_id, f"192.0.2.{n % 4 + 1}", **guess)
        clock.advance(timedelta(minutes=61))
    clock.advance(timedelta(minutes=-41))  # ZEB comes 20 minutes after the last try
    patient = factories.account(runtime)
    asked = attempt(runtime, patient, "203.0.113.50", dob=ZEB[2], ssn4=ZEB[3])
    assert asked is not R.LOCKED
    assert asked is R.NEED_MORE_PROOF
    full = {"dob": ZEB[2], "ssn4": ZEB[3], "last_name": ZEB[1], "zip": ZEB[4]}
    assert attempt(runtime, patient, "203.0.113.50", **full) is R.VERIFIED
    assert link_of(runtime, patient) == patient_of(runtime, ZEB)


def test_a_day_of_guessing_at_one_birth_date_from_many_accounts_and_addresses(
    counters_in: Runtime, clock: Clock
) -> None:
    """The simulation: for a day, a guess every 5 minutes at ZEB's birth date, each from a
    fresh address, a fresh account every four guesses (never reaching an account's lock),
    bare DOB + SSN4 guesses and guesses with a last name and ZIP by turns. At noon ZEB
    verifies, from home, like anyone would. (That a bare guess of the right SSN last 4
    does not link once stepped up: the test above.) Counters in the database, or Redis."""
    runtime = counters_in
    hosts = addresses()
    names = itertools.cycle(["Smith", "Johnson", "Quillfeather", "Williams"])
    zips = itertools.cycle(["02138", "02139", "02140", "10001", "94110"])
    seen: Counter[R] = Counter()
    attackers: list[str] = []
    patient_tries: list[R] = []
    patient = factories.account(runtime)
    end = clock.now + timedelta(days=1)
    for n in itertools.count():
        if clock.now >= end:
            break
        if n % 4 == 0:
            attackers.append(factories.account(runtime))
        guess = {"dob": ZEB[2], "ssn4": f"{(n * 37 + 1000) % 10_000:04d}"}
        if n % 2:  # half the time, a guessed last name and ZIP as well
            guess |= {"last_name": next(names), "zip": next(zips)}
        result = attempt(runtime, attackers[-1], next(hosts), **guess)
        seen[result] += 1
        assert result is not R.VERIFIED, (n, guess)
        if not patient_tries and clock.now >= end - timedelta(hours=12):
            home = "203.0.113.77"
            patient_tries.append(attempt(runtime, patient, home, dob=ZEB[2], ssn4=ZEB[3]))
            assert patient_tries[0] is not R.LOCKED  # what the old throttle answered
            full = {"dob": ZEB[2], "ssn4": ZEB[3], "last_name": ZEB[1], "zip": ZEB[4]}
            patient_tries.append(attempt(runtime, patient, home, **full))
        clock.advance(timedelta(minutes=5))

    assert patient_tries == [R.NEED_MORE_PROOF, R.VERIFIED]
    assert link_of(runtime, patient) == patient_of(runtime, ZEB)
    assert all(link_of(runtime, a) is None for a in attackers)
    assert sum(seen.values()) == 288 and R.LOCKED not in seen
    # Checked bare guesses: the first few only (CAREBRIDGE_VERIFY_STEP_UP_AFTER); the
    # rest were checked only with a last name and ZIP, or asked for them.
    step_up = runtime.settings.verify_step_up_after
    assert seen[R.NEED_TIEBREAKER] <= step_up, seen
    assert seen[R.NEED_MORE_PROOF] >= 140, seen


def locks(kind: str) -> float:
    value = REGISTRY.get_sample_value("carebridge_verification_locks_total", {"kind": kind})
    return value or 0.0


def alerts(kind: str) -> float:
    value = REGISTRY.get_sample_value("carebridge_verification_alerts_total", {"kind": kind})
    return value or 0.0


def test_locks_and_alerts_are_counted(runtime: Runtime, roster: None, clock: Clock) -> None:
    before = {kind: alerts(kind) for kind in ("dob", "address", "record")}
    locked_before = locks("account")
    guesser = factories.account(runtime)
    for n in range(5):
        fields = {"dob": "1950-01-01", "ssn4": f"{n:04d}", "last_name": "X", "zip": "00000"}
        attempt(runtime, guesser, "192.0.2.1", **fields)
    assert locks("account") - locked_before == 1
    # One record (Ada's DOB and SSN last 4) failed by ten accounts from ten addresses.
    for number in range(10):
        account_id = factories.account(runtime)
        fields = {"dob": TWIN_A[2], "ssn4": TWIN_A[3], "last_name": "Wrong", "zip": "00000"}
        attempt(runtime, account_id, f"192.0.2.{number + 10}", **fields)
    # Ten failures from one address.
    for n in range(10):
        account_id = factories.account(runtime)
        attempt(runtime, account_id, "192.0.2.200", dob=f"1930-01-{n + 1:02d}", ssn4="0000")
    after = {kind: alerts(kind) - before[kind] for kind in before}
    # Two birth dates reached the step-up: 1950-01-01 and Ada's.
    assert after == {"dob": 2, "address": 1, "record": 1}
