"""Throttling: the delay schedule, the 100-failure lock, per-address limits, both stores
(the database and Redis), and brute force through the API."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.audit import AuditRecord
from carebridge.cli import main
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity import accounts, throttle
from identity.models import ThrottleCounter
from tests.identity.verification_mail import signed_up
from tests.realparts import require

FAST = {"argon2_memory_kib": 8192, "argon2_time_cost": 1}
REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
PASSWORD = "quiet harbour lamp"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, **FAST)


def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        require("Redis", False, f"127.0.0.1:6379: {exc}")
    return client


@pytest.fixture(params=["database", "redis"])
def store(request: pytest.FixtureRequest, runtime: Runtime) -> Iterator[throttle.Store]:
    if request.param == "database":
        yield throttle.DatabaseStore()
        return
    client = redis_client()
    yield throttle.RedisStore(client)
    client.close()


def key() -> str:
    return secrets.token_hex(16)


class Counter:
    """One key of a store, driven through the runtime's transactions."""

    def __init__(self, runtime: Runtime, store: throttle.Store, limit: throttle.Limit) -> None:
        self.runtime, self.store, self.limit = runtime, store, limit

    def attempt(self, now: datetime) -> int | None:
        with self.runtime.sessions.begin() as db:
            counts = self.store.attempt(db, [self.limit], now)
        return None if counts is None else counts[self.limit.key]

    def state(self, now: datetime) -> throttle.State:
        with self.runtime.sessions.begin() as db:
            return self.store.state(db, self.limit, now)

    def reset(self) -> None:
        with self.runtime.sessions.begin() as db:
            self.store.reset(db, self.limit)

    def refund(self, now: datetime) -> None:
        with self.runtime.sessions.begin() as db:
            self.store.refund(db, self.limit, now)


# The schedule


def test_login_schedule_four_free_then_doubling_to_fifteen_minutes_then_locked() -> None:
    delays = [throttle.LOGIN.delay(n) for n in range(1, 101)]
    assert delays[:4] == [0, 0, 0, 0]
    assert delays[4:11] == [1, 2, 4, 8, 16, 32, 64]
    assert delays[14:99] == [900] * 85
    assert max(d for d in delays[:99] if d is not None) == 900
    assert delays[99] is None  # the 100th failure: locked until an operator clears it


def test_address_schedule_is_looser_and_never_locks_for_good() -> None:
    assert [throttle.ADDRESS.delay(n) for n in (1, 20, 21, 22)] == [0, 0, 1, 2]
    assert throttle.ADDRESS.delay(10_000) == 900


def test_ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert throttle.address_of("2001:db8:1:2:aaaa::1") == throttle.address_of("2001:db8:1:2::ffff")
    assert throttle.address_of("2001:db8:1:2::1") != throttle.address_of("2001:db8:1:3::1")
    assert throttle.address_of("::ffff:192.0.2.7") == "192.0.2.7"


def test_keys_hold_no_login_or_address_in_plaintext(runtime: Runtime) -> None:
    login_key = throttle.login_limit(accounts.login_hash(runtime.keyring, "jane@example.org")).key
    address_key = throttle.address_limit(runtime.keyring, "192.0.2.7").key
    assert "jane" not in login_key and "192.0.2" not in address_key
    assert re_hex(login_key.removeprefix("login:")) and re_hex(address_key.removeprefix("ip:"))


def re_hex(text: str) -> bool:
    return len(text) == 64 and all(ch in "0123456789abcdef" for ch in text)


# Both stores


def test_first_four_failures_are_free_then_each_locks_twice_as_long(
    runtime: Runtime, store: throttle.Store
) -> None:
    counter = Counter(runtime, store, throttle.Limit(throttle.LOGIN, f"login:{key()}"))
    now = T0
    for expected in range(1, 5):
        assert counter.attempt(now) == expected
        assert not counter.state(now).locked(now)
    for n, delay in ((5, 1), (6, 2), (7, 4), (8, 8)):
        assert counter.attempt(now) == n
        assert counter.state(now).locked(now + timedelta(seconds=delay - 0.5))
        assert counter.attempt(now + timedelta(seconds=delay - 0.5)) is None  # not counted
        now += timedelta(seconds=delay)
        assert not counter.state(now).locked(now)
    assert counter.state(now).failures == 8


def test_attempts_racing_into_the_delay_range_are_refused(
    runtime: Runtime, store: throttle.Store
) -> None:
    # Counted before the password is checked: of two attempts at the same moment after
    # four failures, the first is let through (and locks), the second is refused.
    counter = Counter(runtime, store, throttle.Limit(throttle.LOGIN, f"login:{key()}"))
    for _ in range(4):
        counter.attempt(T0)
    assert counter.attempt(T0) == 5
    assert counter.attempt(T0) is None


def test_hundredth_failure_locks_until_an_operator_resets(
    runtime: Runtime, store: throttle.Store
) -> None:
    counter = Counter(runtime, store, throttle.Limit(throttle.LOGIN, f"login:{key()}"))
    now = T0
    for _ in range(99):
        assert counter.attempt(now) is not None
        now += timedelta(minutes=15)
    assert counter.attempt(now) == 100  # the 100th attempt is still checked...
    later = now + timedelta(days=365)
    assert counter.state(later).hard_locked  # ...and then nothing more, however long
    assert counter.attempt(later) is None
    counter.reset()
    assert counter.attempt(later) == 1


def test_a_locked_key_blocks_the_other_keys_of_an_attempt_without_counting_them(
    runtime: Runtime, store: throttle.Store
) -> None:
    locked = throttle.Limit(throttle.LOGIN, f"login:{key()}")
    other = throttle.Limit(throttle.ADDRESS, f"ip:{key()}")
    for _ in range(5):
        Counter(runtime, store, locked).attempt(T0)
    with runtime.sessions.begin() as db:
        assert store.attempt(db, [locked, other], T0) is None
    assert Counter(runtime, store, other).state(T0).failures == 0


def test_refund_takes_back_one_attempt_and_its_lock(
    runtime: Runtime, store: throttle.Store
) -> None:
    counter = Counter(runtime, store, throttle.Limit(throttle.ADDRESS, f"ip:{key()}"))
    for _ in range(21):
        counter.attempt(T0)
    assert counter.state(T0).locked(T0)
    counter.refund(T0)
    state = counter.state(T0)
    assert state.failures == 20 and not state.locked(T0)


def test_address_is_forgotten_after_an_hour_quiet_but_a_login_is_not(
    runtime: Runtime, store: throttle.Store
) -> None:
    address = Counter(runtime, store, throttle.Limit(throttle.ADDRESS, f"ip:{key()}"))
    login = Counter(runtime, store, throttle.Limit(throttle.LOGIN, f"login:{key()}"))
    for _ in range(3):
        address.attempt(T0)
        login.attempt(T0)
    if isinstance(store, throttle.RedisStore):
        # Redis forgets by expiry: check the TTLs instead of waiting an hour.
        ttl_address = store.client.ttl(f"carebridge:throttle:{address.limit.key}")
        ttl_login = store.client.ttl(f"carebridge:throttle:{login.limit.key}")
        assert 3500 < ttl_address <= 3600
        assert ttl_login > 29 * 24 * 3600
        return
    later = T0 + timedelta(hours=1)
    assert address.state(later).failures == 0
    assert address.attempt(later) == 1
    assert login.state(later).failures == 3


def test_refunding_an_attempt_counted_to_the_cap_gives_the_key_its_quiet_period_back(
    runtime: Runtime, store: throttle.Store
) -> None:
    # Counted to its cap, a Redis key loses its expiry (a hard lock never expires). Taken
    # back below the cap, it must be forgotten after its quiet period again, as the
    # database forgets it: it used to stay in Redis for good.
    policy = throttle.ACTIVATE_ACCOUNT  # capped at 5, forgotten after 24 quiet hours
    assert policy.hard_cap == 5 and policy.forget_after == timedelta(hours=24)
    counter = Counter(runtime, store, throttle.Limit(policy, f"activate:{key()}"))
    for _ in range(5):
        counter.attempt(T0)
    assert counter.state(T0).hard_locked
    counter.refund(T0)
    assert counter.state(T0).failures == 4 and not counter.state(T0).hard_locked
    if isinstance(store, throttle.RedisStore):
        ttl = store.client.ttl(f"carebridge:throttle:{counter.limit.key}")
        assert 23 * 3600 < ttl <= 24 * 3600
    else:
        assert counter.state(T0 + timedelta(hours=24)).failures == 0
    counter.reset()


def test_a_policy_that_never_forgets_keeps_its_count_without_expiry(
    runtime: Runtime, store: throttle.Store
) -> None:
    # Verification's per-account count: 5 failures in the account's life, however slowly
    # they come (4 a day, each day forgotten, was an account that never ran out).
    policy = throttle.VERIFY_ACCOUNT
    assert policy.forget_after is None
    counter = Counter(runtime, store, throttle.Limit(policy, f"verify-account:{key()}"))
    for _ in range(4):
        counter.attempt(T0)
    if isinstance(store, throttle.RedisStore):
        assert store.client.ttl(f"carebridge:throttle:{counter.limit.key}") == -1
    years = T0 + timedelta(days=3 * 365)
    assert counter.state(years).failures == 4
    assert counter.attempt(years) == 5
    assert counter.attempt(years + timedelta(days=365)) is None
    counter.reset()


def gated(
    runtime: Runtime, store: throttle.Store, limits: list[throttle.Limit], gates: dict[str, int]
) -> dict[str, int] | throttle.Refused:
    with runtime.sessions.begin() as db:
        return store.attempt_gated(db, limits, T0, gates)


def test_an_attempt_at_a_gate_counts_and_writes_nothing(
    runtime: Runtime, store: throttle.Store
) -> None:
    # Verification's step-up: with its birth date past the mark, an attempt without last
    # name and ZIP is not counted at all, not even as a last attempt (so nobody keeps a
    # birth date stepped up by asking), and a new key gets no row.
    dob = throttle.Limit(throttle.VERIFY_DOB, f"verify-dob:{key()}")
    fresh = throttle.Limit(throttle.VERIFY_RECORD, f"verify-record:{key()}")
    account = throttle.Limit(throttle.VERIFY_ACCOUNT, f"verify-account:{key()}")
    assert gated(runtime, store, [dob, account], {dob.key: 2}) == {dob.key: 1, account.key: 1}
    assert gated(runtime, store, [dob, account], {dob.key: 2}) == {dob.key: 2, account.key: 2}
    if isinstance(store, throttle.RedisStore):
        store.client.expire(f"carebridge:throttle:{dob.key}", 600)
    else:
        with runtime.sessions() as db:
            before = db.get(ThrottleCounter, dob.key)
            assert before is not None
            written = before.updated_at
    later = [dob, account, fresh]
    assert gated(runtime, store, later, {dob.key: 2}) is throttle.Refused.GATED
    assert Counter(runtime, store, account).state(T0).failures == 2
    assert Counter(runtime, store, dob).state(T0).failures == 2
    if isinstance(store, throttle.RedisStore):
        assert store.client.ttl(f"carebridge:throttle:{dob.key}") <= 600
        assert not store.client.exists(f"carebridge:throttle:{fresh.key}")
    else:
        with runtime.sessions() as db:
            after = db.get(ThrottleCounter, dob.key)
            assert after is not None and after.updated_at == written
            assert db.get(ThrottleCounter, fresh.key) is None
    # A lock is the answer before a gate; without gates, the same attempt counts.
    for _ in range(3):
        Counter(runtime, store, account).attempt(T0)
    assert gated(runtime, store, later, {dob.key: 2}) is throttle.Refused.LOCKED
    Counter(runtime, store, account).reset()
    assert gated(runtime, store, later, {}) == {dob.key: 3, account.key: 1, fresh.key: 1}
    for limit in later:
        Counter(runtime, store, limit).reset()


def test_attempts_racing_at_a_gate_cannot_all_slip_under_it(
    runtime: Runtime, store: throttle.Store
) -> None:
    # Decided in the counting step itself: of 12 attempts at once on a birth date with
    # a mark of 3, exactly 3 are counted (and so checked); the rest are refused.
    dob = throttle.Limit(throttle.VERIFY_DOB, f"verify-dob:{key()}")
    start = threading.Barrier(12)
    answers: list[object] = []
    addresses = [throttle.Limit(throttle.VERIFY_ADDRESS, f"verify-ip:{key()}") for _ in range(12)]
    unused = list(addresses)

    def one() -> None:
        address = unused.pop()
        start.wait()
        answers.append(gated(runtime, store, [dob, address], {dob.key: 3}))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counted = sorted(a[dob.key] for a in answers if isinstance(a, dict))
    assert counted == [1, 2, 3]
    assert answers.count(throttle.Refused.GATED) == 9
    for limit in [dob, *addresses]:
        Counter(runtime, store, limit).reset()


def test_hard_lock_survives_in_redis_without_expiry(runtime: Runtime) -> None:
    client = redis_client()
    store = throttle.RedisStore(client)
    counter = Counter(runtime, store, throttle.Limit(throttle.LOGIN, f"login:{key()}"))
    now = T0
    for _ in range(100):
        counter.attempt(now)
        now += timedelta(minutes=15)
    assert client.ttl(f"carebridge:throttle:{counter.limit.key}") == -1  # no expiry
    counter.reset()


def test_a_counter_that_only_counts_never_refuses_even_a_delay_stored_before(
    runtime: Runtime, store: throttle.Store
) -> None:
    # Verification's shared counters (address, birth date, roster identity) only count:
    # nobody's attempt is refused by them, a delay set under an older policy included.
    shared = (throttle.VERIFY_ADDRESS, throttle.VERIFY_DOB, throttle.VERIFY_PERSON)
    assert not any(p.refuses for p in shared)
    assert not throttle.VERIFY_RECORD.refuses and throttle.VERIFY_ACCOUNT.refuses
    name = f"verify-dob:{key()}"
    older = throttle.Policy("verify-dob", 0, 3600, None, timedelta(hours=24))
    counter = Counter(runtime, store, throttle.Limit(older, name))
    for _ in range(12):
        counter.attempt(T0)
    assert counter.state(T0).locked(T0)  # the old policy's delay, stored
    counting = Counter(runtime, store, throttle.Limit(throttle.VERIFY_DOB, name))
    assert [counting.attempt(T0 + timedelta(seconds=n)) for n in range(200)] == list(range(2, 202))
    counting.reset()


def test_purge_keeps_hard_locks_and_recent_counters(runtime: Runtime) -> None:
    old, recent = T0 - timedelta(days=40), T0 - timedelta(days=2)
    hard_login, hard_mfa = f"login:{key()}", f"mfa:{key()}"
    stale_login, busy_address = f"login:{key()}", f"ip:{key()}"
    stale_signups, recent_address = f"signup-ip:{key()}", f"ip:{key()}"
    staff_review = [f"activate:{key()}", f"verify-account:{key()}"]
    remembered = f"verify-account:{key()}"
    rows = {
        remembered: (2, old),  # an account's verification failures are never forgotten
        f"verify-account:{key()}": (0, old),  # a row without failures is nothing: purged
        f"verify-person:{key()}": (12, old),  # people only count: purged
        hard_login: (100, old),  # locked until an operator clears it: kept
        hard_mfa: (100, old),  # another policy's hard lock: kept
        staff_review[0]: (5, old),  # locked until staff review, below 100: kept
        staff_review[1]: (5, old),
        f"verify-record:{key()}": (150, old),  # records and birth dates only count: purged
        f"verify-dob:{key()}": (150, old),
        stale_login: (99, old),  # purged
        busy_address: (150, old),  # addresses never lock for good: purged
        stale_signups: (3, old),  # purged
        recent_address: (3, recent),  # kept
    }
    with runtime.sessions.begin() as db:
        for k, (failures, at) in rows.items():
            db.add(ThrottleCounter(key=k, failures=failures, locked_until=None, updated_at=at))
    with runtime.sessions.begin() as db:
        assert throttle.DatabaseStore().purge(db, T0) == 7
        remaining = set(db.scalars(select(ThrottleCounter.key)))
    assert remaining == {hard_login, hard_mfa, recent_address, remembered, *staff_review}


# Through the API


def signin(client: TestClient, login: str, pw: str = PASSWORD) -> tuple[int, dict[str, object]]:
    response = client.post("/api/v1/signin", json={"login": login, "password": pw})
    body = response.json()
    body.pop("request_id", None)
    return response.status_code, body


def signup(client: TestClient, login: str) -> None:
    """Sign up and confirm the address with the e-mailed code (a verified account)."""
    signed_up(client, login, PASSWORD)


def brute_force(client: TestClient, login: str) -> list[tuple[int, dict[str, object]]]:
    """Six wrong passwords in quick succession, then the right one."""
    return [signin(client, login, f"wrong guess {i}") for i in range(6)] + [signin(client, login)]


def test_brute_force_locks_after_four_free_failures_even_for_the_right_password(
    client: TestClient,
) -> None:
    signup(client, "jane@example.org")
    answers = brute_force(client, "jane@example.org")
    assert [status for status, _ in answers] == [401, 401, 401, 401, 401, 429, 429]
    assert answers[5][1]["detail"] == answers[6][1]["detail"]
    assert "Too many attempts" in str(answers[6][1]["detail"])


def test_lock_answers_the_same_for_an_unknown_login(client: TestClient) -> None:
    signup(client, "jane@example.org")
    known = brute_force(client, "jane@example.org")
    unknown = brute_force(client, "nobody@example.org")
    assert known == unknown


def test_success_resets_the_login_counter(client: TestClient, runtime: Runtime) -> None:
    signup(client, "jane@example.org")
    for _ in range(4):
        assert signin(client, "jane@example.org", "wrong guess")[0] == 401
    assert signin(client, "jane@example.org")[0] == 200
    for _ in range(4):  # four free failures again, not a lock
        assert signin(client, "jane@example.org", "wrong guess")[0] == 401
    assert signin(client, "jane@example.org")[0] == 200


def seed(runtime: Runtime, limit: throttle.Limit, failures: int, at: datetime) -> None:
    with runtime.sessions.begin() as db:
        db.merge(
            ThrottleCounter(key=limit.key, failures=failures, locked_until=None, updated_at=at)
        )


def test_hundred_failures_lock_the_account_until_an_operator_unlocks_it(
    client: TestClient,
    runtime: Runtime,
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    signup(client, "jane@example.org")
    limit = throttle.login_limit(accounts.login_hash(runtime.keyring, "jane@example.org"))
    seed(runtime, limit, 99, datetime.now(UTC) - timedelta(minutes=16))
    assert signin(client, "jane@example.org", "wrong guess")[0] == 401  # the 100th
    assert signin(client, "jane@example.org")[0] == 429
    with runtime.sessions.begin() as db:
        state = throttle.DatabaseStore().state(db, limit, datetime.now(UTC) + timedelta(days=90))
    assert state.hard_locked

    monkeypatch.setattr("sys.stdin", _Stdin(" Jane@Example.org \n"))
    assert main(["accounts", "unlock"]) == 0
    assert "100 failed attempts" in capsys.readouterr().out
    assert signin(client, "jane@example.org")[0] == 200
    with runtime.sessions() as db:
        actions = list(db.scalars(select(AuditRecord.action).order_by(AuditRecord.seq)))
    assert "identity.signin.unlock" in actions


def test_unlock_also_clears_a_second_factor_lock(
    client: TestClient,
    runtime: Runtime,
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from identity.flows import mfa  # noqa: PLC0415

    signup(client, "jane@example.org")
    with runtime.sessions() as db:
        found = accounts.find_by_login(db, runtime.keyring, "jane@example.org")
    assert found is not None
    limit = mfa.second_step_limit(found.account_id)
    seed(runtime, limit, 100, datetime.now(UTC))
    monkeypatch.setattr("sys.stdin", _Stdin("jane@example.org\n"))
    assert main(["accounts", "unlock"]) == 0
    assert "100 failed attempts" in capsys.readouterr().out
    with runtime.sessions.begin() as db:
        assert throttle.DatabaseStore().state(db, limit, datetime.now(UTC)).failures == 0
    with runtime.sessions() as db:
        actions = list(db.scalars(select(AuditRecord.action)))
    assert "identity.mfa.unlock" in actions


class _Stdin:
    def __init__(self, text: str) -> None:
        self.text = text

    def readline(self) -> str:
        return self.text


def test_unlock_refuses_input_that_is_not_an_email_address(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", _Stdin("not an address\n"))
    assert main(["accounts", "unlock"]) == 1
    assert "one email address" in capsys.readouterr().err


def test_password_spraying_from_one_address_is_slowed_across_accounts(
    client: TestClient, runtime: Runtime
) -> None:
    signup(client, "jane@example.org")
    for i in range(20):
        assert signin(client, f"person{i}@example.org", "Summer2026!")[0] == 401
    assert signin(client, "person20@example.org", "Summer2026!")[0] == 401  # 21st: locks
    assert signin(client, "jane@example.org")[0] == 429  # any login, from this address
    # Another address is not affected.
    with TestClient(client.app, client=("198.51.100.9", 40000)) as elsewhere:
        assert signin(elsewhere, "jane@example.org")[0] == 200


def test_signing_in_to_ones_own_account_does_not_reset_the_address(
    client: TestClient, runtime: Runtime
) -> None:
    signup(client, "mallory@example.org")
    for i in range(20):
        assert signin(client, f"victim{i}@example.org", "Summer2026!")[0] == 401
    assert signin(client, "mallory@example.org")[0] == 200  # refunds only itself
    assert signin(client, "victim20@example.org", "Summer2026!")[0] == 401  # 21st
    assert signin(client, "victim21@example.org", "Summer2026!")[0] == 429


def test_every_lock_is_audited(client: TestClient, runtime: Runtime) -> None:
    signup(client, "jane@example.org")
    brute_force(client, "jane@example.org")
    with runtime.sessions() as db:
        rows = db.execute(
            select(AuditRecord.action, AuditRecord.outcome, func.count()).group_by(
                AuditRecord.action, AuditRecord.outcome
            )
        ).all()
    counts = {(action, outcome): n for action, outcome, n in rows}
    assert counts[("identity.signin.password", "failed")] == 5
    assert counts[("identity.signin.lock", "denied")] == 1
    assert counts[("identity.signin.password", "denied")] == 2


def test_redis_store_throttles_sign_in_across_replicas(tmp_path: Path, database_url: str) -> None:
    redis_client().close()
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, redis_url=REDIS_URL, **FAST
    )
    # Two replicas: separate apps and runtimes, one database, one Redis.
    first, second = Runtime.build(settings), Runtime.build(settings)
    login = f"{key()}@example.org"
    try:
        with (
            TestClient(create_app(first), raise_server_exceptions=False) as a,
            TestClient(create_app(second), raise_server_exceptions=False) as b,
        ):
            signup(a, login)
            statuses = [signin(a if i % 2 else b, login, "wrong guess")[0] for i in range(6)]
            assert statuses == [401, 401, 401, 401, 401, 429]
            assert signin(b, login)[0] == 429
            with first.sessions() as db:
                assert db.scalar(select(func.count()).select_from(ThrottleCounter)) == 0
    finally:
        client = redis_client()
        keyring = first.keyring
        for limit in (
            throttle.login_limit(accounts.login_hash(keyring, login)),
            throttle.address_limit(keyring, "testclient"),
            throttle.address_limit(keyring, "testclient", throttle.SIGNUP_ADDRESS),
        ):
            client.delete(f"carebridge:throttle:{limit.key}")
        client.close()
        first.close()
        second.close()


def test_the_worker_purges_stale_counters_hourly(runtime: Runtime) -> None:
    from carebridge.cli.worker import JOBS  # noqa: PLC0415

    (job,) = [job for job in JOBS if job.name == "throttle-purge"]
    assert job.interval == 3600
    stale = f"login:{key()}"
    with runtime.sessions.begin() as db:
        db.add(
            ThrottleCounter(
                key=stale, failures=3, locked_until=None, updated_at=T0 - timedelta(days=40)
            )
        )
    job.run(runtime)
    with runtime.sessions() as db:
        assert db.get(ThrottleCounter, stale) is None


class _Recording:
    """A store that notes what settle asks of it, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def reset(self, db: object, limit: throttle.Limit) -> None:
        self.calls.append(("reset", limit.key))

    def refund(self, db: object, limit: throttle.Limit, now: datetime) -> None:
        self.calls.append(("refund", limit.key))


def test_settling_after_a_success_touches_counters_in_key_order() -> None:
    # The order attempt() locks them in: a concurrent attempt sharing the address, birth
    # date or record then waits instead of deadlocking (it did, in the verify flow).
    account = throttle.Limit(throttle.VERIFY_ACCOUNT, "verify-account:acc_z")
    record = throttle.Limit(throttle.VERIFY_RECORD, "verify-record:r")
    dob = throttle.Limit(throttle.VERIFY_DOB, "verify-dob:d")
    store = _Recording()
    throttle.settle(
        store,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        reset=[account],
        refund=[record, dob],
        now=datetime.now(UTC),
    )
    assert store.calls == [
        ("reset", "verify-account:acc_z"),
        ("refund", "verify-dob:d"),
        ("refund", "verify-record:r"),
    ]


def test_forgetting_an_account_deletes_its_counters_and_no_others(
    runtime: Runtime, store: throttle.Store
) -> None:
    """What a deletion does (identity/deletion.py), in either store."""
    account, other = f"acc_{key()}", f"acc_{key()}"
    policies = throttle.KEYED_BY_ACCOUNT
    mine = [Counter(runtime, store, throttle.account_limit(p, account)) for p in policies]
    theirs = Counter(runtime, store, throttle.account_limit(throttle.RECOVERY_ACCOUNT, other))
    for counter in [*mine, theirs]:
        assert counter.attempt(T0) == 1
    with runtime.sessions.begin() as db:
        throttle.forget_account(store, db, account)
    assert [counter.state(T0).failures for counter in mine] == [0] * len(policies)
    assert theirs.state(T0).failures == 1
