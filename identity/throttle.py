"""Throttling password guesses: failures per login identifier and per client address.

Policy (NIST SP 800-63B §5.2.2, "rate limiting"):

- Per login identifier (:data:`LOGIN`): the first 4 consecutive failures cost nothing;
  failure n >= 5 locks the identifier for 2^(n-5) seconds (1 s, 2 s, 4 s ...), at most
  15 minutes. At 100 consecutive failures the identifier locks until an operator clears it
  (``carebridge accounts unlock``), so no account ever sees more than 100 consecutive
  failures. A success resets the count.
- Per client address (:data:`ADDRESS`): looser, 20 failures before delays, the same
  doubling to 15 minutes, never a permanent lock (many people can share an address), and
  forgotten after an hour without attempts. A success takes back its own attempt but does
  not reset the address: signing in to one's own account must not buy more guesses at
  someone else's. IPv6 addresses count per /64, the block one subscriber usually gets.
- Sign-ups per address (:data:`SIGNUP_ADDRESS`): the same shape, so sign-up cannot be
  used to probe logins in bulk.
- Upstream sign-ins started per address (:data:`UPSTREAM_START_ADDRESS`): 30 free, then
  the same delays; each start stores a round trip's state for anyone who asks.

Keys never hold a login or an address in plaintext: the identifier's key is its login
lookup hash, so a login without an account is counted (and locked) exactly like one
with an account, and an address is keyed by its own lookup hash.

Every attempt is counted *before* the password is checked, as if it were going to fail,
and the lock that failure would earn is set in the same step; a success then resets the
identifier and refunds the address. Concurrent guesses therefore cannot all slip through
while the first is still being hashed: once one attempt enters the delay range, the
attempts racing it are refused.

Two stores keep the counters behind one :class:`Store` protocol: the database's
``throttle_counter`` table (the default), or Redis when ``CAREBRIDGE_REDIS_URL`` is set.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Protocol, cast

import redis
from sqlalchemy import Select, Table, and_, bindparam, case, delete, not_, or_, select, text, update
from sqlalchemy.orm import Session

from carebridge.keyring import Keyring
from carebridge.runtime import Runtime
from carebridge.settings import Settings

# Re-exported: the flows read the throttle's clock here (tests freeze it here).
from carebridge.utc import utcnow as utcnow  # noqa: PLC0414
from identity.models import ThrottleCounter


@dataclass(frozen=True)
class Policy:
    prefix: str
    free: int  # consecutive failures that cost nothing
    max_delay: int  # seconds
    hard_cap: int | None  # failures at which the key locks until an operator clears it
    # A key this long without attempts starts again (unless hard-locked); None: never,
    # only a reset (a success, an operator) clears it.
    forget_after: timedelta | None

    def delay(self, failures: int) -> float | None:
        """Seconds the key stays locked after this many failures; None: until cleared."""
        if self.hard_cap is not None and failures >= self.hard_cap:
            return None
        if failures <= self.free:
            return 0
        return float(min(2 ** min(failures - self.free - 1, 30), self.max_delay))

    def hard_locked(self, failures: int) -> bool:
        return self.hard_cap is not None and failures >= self.hard_cap

    @property
    def refuses(self) -> bool:
        """False for a counter that only counts (no delays, no cap): it never refuses an
        attempt, whatever it holds (a delay stored under an older policy included)."""
        return self.max_delay > 0 or self.hard_cap is not None


HARD_CAP = 100  # NIST SP 800-63B §5.2.2: at most 100 consecutive failures per account
LOGIN = Policy(
    "login", free=4, max_delay=15 * 60, hard_cap=HARD_CAP, forget_after=timedelta(days=30)
)
ADDRESS = Policy("ip", free=20, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1))
SIGNUP_ADDRESS = Policy(
    "signup-ip", free=20, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
UPSTREAM_START_ADDRESS = Policy(
    "upstream-ip", free=30, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
# Identity verification (identity/flows/verify.py): four SSN digits are 10,000 guesses.
# Only the account's own counter refuses: its 5th failure locks it until staff review,
# and its failures are never forgotten before a success or that review (forgotten after a
# quiet day, an account guessed 4 times a day for ever). The shared ones (address, DOB,
# roster identity, DOB + last name + ZIP) only count: a stranger could fill them, so they
# never refuse anyone; past its threshold (in verify.py) the address or DOB makes
# verification ask for last name and ZIP as well, and a roster identity or a person
# failed 10 times raises an alert. Each is forgotten after its quiet period.
VERIFY_ACCOUNT = Policy("verify-account", free=5, max_delay=0, hard_cap=5, forget_after=None)
VERIFY_ADDRESS = Policy(
    "verify-ip", free=0, max_delay=0, hard_cap=None, forget_after=timedelta(hours=1)
)
VERIFY_RECORD = Policy(
    "verify-record", free=0, max_delay=0, hard_cap=None, forget_after=timedelta(days=30)
)
VERIFY_DOB = Policy(
    "verify-dob", free=0, max_delay=0, hard_cap=None, forget_after=timedelta(days=30)
)
VERIFY_PERSON = Policy(
    "verify-person", free=0, max_delay=0, hard_cap=None, forget_after=timedelta(days=30)
)
# Activation codes (identity/flows/activate.py): 5 failures lock redemption until staff
# review (`carebridge roster activation-unlock`); per address, delays only.
ACTIVATE_ACCOUNT = Policy(
    "activate", free=4, max_delay=15 * 60, hard_cap=5, forget_after=timedelta(hours=24)
)
ACTIVATE_ADDRESS = Policy(
    "activate-ip", free=20, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
_NEVER_CAPPED: tuple[Policy, ...] = (
    ADDRESS,
    SIGNUP_ADDRESS,
    UPSTREAM_START_ADDRESS,
    VERIFY_ADDRESS,
    VERIFY_DOB,
    VERIFY_RECORD,
    VERIFY_PERSON,
    ACTIVATE_ADDRESS,
)
# Policies that lock for good below HARD_CAP: purge keeps their locked counters too.
_CAPPED_LOW = (VERIFY_ACCOUNT, ACTIVATE_ACCOUNT)
# Policies that never forget: purge keeps every counter of theirs that holds a failure.
_REMEMBERED = (VERIFY_ACCOUNT,)
# Longer than any policy's forget_after.
PURGE_AFTER = timedelta(days=31)


@dataclass(frozen=True)
class Limit:
    policy: Policy
    key: str


def login_limit(login_lookup_hash: str) -> Limit:
    return Limit(LOGIN, f"{LOGIN.prefix}:{login_lookup_hash}")


def address_of(host: str | None) -> str:
    """The address a client is counted under: IPv4 as is, IPv6 by its /64."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return (host or "unknown")[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


def address_limit(keyring: Keyring, host: str | None, policy: Policy = ADDRESS) -> Limit:
    hashed = keyring.lookup_hash("client-address", address_of(host))
    return Limit(policy, f"{policy.prefix}:{hashed}")


@dataclass(frozen=True)
class State:
    failures: int
    locked_until: datetime | None  # None: not locked by time (see hard_locked)
    hard_locked: bool

    def locked(self, now: datetime) -> bool:
        return self.hard_locked or (self.locked_until is not None and self.locked_until > now)


class Refused(Enum):
    """Why :meth:`Store.attempt_gated` counted nothing."""

    LOCKED = "locked"  # a key whose policy refuses is locked
    GATED = "gated"  # a gate key already held its number of failures


class Store(Protocol):
    """Where the counters live. ``db`` is the caller's transaction (the database store
    counts in it; the Redis store ignores it)."""

    def attempt(self, db: Session, limits: Sequence[Limit], now: datetime) -> dict[str, int] | None:
        """If no key is locked: count one failure on each, set the lock it earns, and return
        each key's count. If any key is locked: count nothing and return None."""

    def attempt_gated(
        self, db: Session, limits: Sequence[Limit], now: datetime, gates: Mapping[str, int]
    ) -> dict[str, int] | Refused:
        """As :meth:`attempt` (a lock refuses with ``Refused.LOCKED``), except that if a key
        named in ``gates`` already holds at least that many failures, nothing is counted
        or written, not even a key's time of last attempt, and the answer is
        ``Refused.GATED``. Decided in the same atomic step as the count, so attempts racing
        each other cannot all slip under a gate."""

    def reset(self, db: Session, limit: Limit) -> None:
        """Forget a key (a success on a login; an operator's unlock)."""

    def refund(self, db: Session, limit: Limit, now: datetime) -> None:
        """Take back one counted attempt that turned out to succeed."""

    def state(self, db: Session, limit: Limit, now: datetime) -> State:
        """The key's count and lock, as the next attempt would see them."""


def _lock_after(policy: Policy, failures: int, now: datetime) -> datetime | None:
    delay = policy.delay(failures)
    return now + timedelta(seconds=delay) if delay else None


_COUNTERS = cast(Table, ThrottleCounter.__table__)
# Core statements, not the ORM: this runs on every sign-in, and a few fixed statements
# cost far less than loading and flushing objects.
# Written out: SQLAlchemy does not cache the compiled form of a dialect's
# ``insert().on_conflict_do_nothing()``, and compiling it costs more than running it.
# PostgreSQL and SQLite (3.24+) spell the upsert alike.
_INSERT_MISSING = text(
    'INSERT INTO throttle_counter ("key", failures, locked_until, updated_at) '
    'VALUES (:key, 0, NULL, :updated_at) ON CONFLICT ("key") DO NOTHING'
).bindparams(bindparam("updated_at", type_=_COUNTERS.c.updated_at.type))
_READ_COUNTERS = (
    select(_COUNTERS.c.key, _COUNTERS.c.failures, _COUNTERS.c.locked_until, _COUNTERS.c.updated_at)
    .where(_COUNTERS.c.key.in_(bindparam("keys", expanding=True)))
    .order_by(_COUNTERS.c.key)
)
_LOCK_COUNTERS = _READ_COUNTERS.with_for_update()
_UPDATE_COUNTER = (
    update(_COUNTERS)
    .where(_COUNTERS.c.key == bindparam("k"))
    .values(failures=bindparam("f"), locked_until=bindparam("u"), updated_at=bindparam("t"))
)
# SQLite: its IMMEDIATE transactions already serialize attempts, so there is no row to
# lock first; one upsert writes the counts.
_UPSERT_COUNTER = text(
    'INSERT INTO throttle_counter ("key", failures, locked_until, updated_at) '
    'VALUES (:k, :f, :u, :t) ON CONFLICT ("key") DO UPDATE SET '
    "failures = excluded.failures, locked_until = excluded.locked_until, "
    "updated_at = excluded.updated_at"
).bindparams(
    bindparam("u", type_=_COUNTERS.c.locked_until.type),
    bindparam("t", type_=_COUNTERS.c.updated_at.type),
)
_DELETE_COUNTER = delete(_COUNTERS).where(_COUNTERS.c.key == bindparam("k"))
# One statement; both sides of SET see the row as it was.
_REFUND_COUNTER = (
    update(_COUNTERS)
    .where(_COUNTERS.c.key == bindparam("k"), _COUNTERS.c.failures > 0)
    .values(
        failures=_COUNTERS.c.failures - 1,
        locked_until=case(
            (_COUNTERS.c.failures - 1 <= bindparam("free"), None),
            else_=_COUNTERS.c.locked_until,
        ),
    )
)


def _state_of(policy: Policy, failures: int, locked_until: datetime | None) -> State:
    return State(failures, locked_until, policy.hard_locked(failures))


def _forgotten(policy: Policy, failures: int, updated_at: datetime, now: datetime) -> bool:
    if policy.forget_after is None:
        return False
    quiet = now - (updated_at or now)
    return quiet >= policy.forget_after and not policy.hard_locked(failures)


_Row = tuple[int, datetime | None, datetime]  # failures, locked_until, updated_at


def _rows(db: Session, statement: Select[Any], keys: list[str]) -> dict[str, _Row]:
    found = db.execute(statement, {"keys": keys})
    return {key: (failures, until, at) for key, failures, until, at in found}


def _decide(
    policies: Mapping[str, Policy],
    rows: Mapping[str, _Row],
    now: datetime,
    gates: Mapping[str, int],
) -> dict[str, int] | Refused:
    """Each key's count after this attempt, or why it counts nothing: a lock first (the
    answer a locked key always gets), then a gate."""
    counts: dict[str, int] = {}
    gated = False
    for key in sorted(policies):
        stored, stored_until, updated_at = rows.get(key, (0, None, now))
        policy = policies[key]
        forgotten = _forgotten(policy, stored, updated_at, now)
        failures = 0 if forgotten else stored
        locked_until = None if forgotten else stored_until
        if policy.refuses and _state_of(policy, failures, locked_until).locked(now):
            return Refused.LOCKED
        gated = gated or (key in gates and failures >= gates[key])
        counts[key] = failures + 1
    return Refused.GATED if gated else counts


class DatabaseStore:
    """Counters in ``throttle_counter``, the attempt's rows locked for its transaction
    (``SELECT ... FOR UPDATE`` in key order on PostgreSQL; SQLite's transactions begin
    IMMEDIATE, which serializes them)."""

    def attempt(self, db: Session, limits: Sequence[Limit], now: datetime) -> dict[str, int] | None:
        counts = self.attempt_gated(db, limits, now, {})
        return None if isinstance(counts, Refused) else counts

    def attempt_gated(
        self, db: Session, limits: Sequence[Limit], now: datetime, gates: Mapping[str, int]
    ) -> dict[str, int] | Refused:
        policies = {limit.key: limit.policy for limit in limits}
        keys = sorted(policies)  # one order for everyone: no crosswise waits
        serialized = db.get_bind().dialect.name == "sqlite"
        if not serialized:
            if gates:
                # A gated attempt writes nothing, not even the empty rows locking needs:
                # read first. A refusal read here stands (a lock or a gate only opens by a
                # reset, a refund or time, so acting on a stale one is safe); anything
                # else is decided again under the lock.
                early = _decide(policies, _rows(db, _READ_COUNTERS, keys), now, gates)
                if isinstance(early, Refused):
                    return early
            # Rows to lock must exist: two first attempts on a new key must not both
            # count from zero.
            db.execute(_INSERT_MISSING, [{"key": k, "updated_at": now} for k in keys])
        counts = _decide(policies, _rows(db, _LOCK_COUNTERS, keys), now, gates)
        if isinstance(counts, Refused):
            return counts
        db.execute(
            _UPSERT_COUNTER if serialized else _UPDATE_COUNTER,
            [
                {"k": key, "f": n, "u": _lock_after(policies[key], n, now), "t": now}
                for key, n in counts.items()
            ],
        )
        return counts

    def reset(self, db: Session, limit: Limit) -> None:
        db.execute(_DELETE_COUNTER, {"k": limit.key})

    def refund(self, db: Session, limit: Limit, now: datetime) -> None:
        db.execute(_REFUND_COUNTER, {"k": limit.key, "free": limit.policy.free})

    def state(self, db: Session, limit: Limit, now: datetime) -> State:
        row = db.get(ThrottleCounter, limit.key, populate_existing=True)
        if row is None or _forgotten(limit.policy, row.failures, row.updated_at, now):
            return State(0, None, hard_locked=False)
        return _state_of(limit.policy, row.failures, row.locked_until)

    def purge(self, db: Session, now: datetime, older_than: timedelta = PURGE_AFTER) -> int:
        """Delete counters quiet for ``older_than`` (longer than any policy remembers one).
        Returns how many went.

        Keeps every counter at 100 failures or more (a lock until an operator clears it,
        under LOGIN or any other policy capped at 100) except those of the uncapped
        policies (addresses, verification's birth dates and roster identities).
        Keeps counters locked at their lower caps (VERIFY_ACCOUNT, ACTIVATE_ACCOUNT) as
        well: those wait for staff review; and every counter holding a failure under a
        policy that never forgets (VERIFY_ACCOUNT).
        """
        never_capped = or_(
            *(_COUNTERS.c.key.startswith(f"{policy.prefix}:") for policy in _NEVER_CAPPED)
        )
        locked_low = or_(
            *(
                and_(
                    _COUNTERS.c.key.startswith(f"{policy.prefix}:"),
                    _COUNTERS.c.failures >= cast(int, policy.hard_cap),
                )
                for policy in _CAPPED_LOW
            )
        )
        remembered = or_(
            *(
                and_(_COUNTERS.c.key.startswith(f"{policy.prefix}:"), _COUNTERS.c.failures > 0)
                for policy in _REMEMBERED
            )
        )
        result = db.execute(
            delete(_COUNTERS).where(
                _COUNTERS.c.updated_at < now - older_than,
                or_(_COUNTERS.c.failures < HARD_CAP, never_capped),
                not_(locked_low),
                not_(remembered),
            )
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


# Redis: one hash per key ("f": failures, "u": locked until, epoch seconds; 0 = not by
# time). Each key expires after its policy's forget_after, except once hard-locked and
# under a policy that never forgets.
_REDIS_PREFIX = "carebridge:throttle:"

# KEYS: the counters. ARGV: now, then per key: free, max_delay, hard_cap (0: none), ttl
# (0: never forgotten), gate (-1: none).
_ATTEMPT = """
local now = tonumber(ARGV[1])
local gated = false
for i = 1, #KEYS do
  local max_delay = tonumber(ARGV[5 * i - 2])
  local cap = tonumber(ARGV[5 * i - 1])
  local gate = tonumber(ARGV[5 * i + 1])
  local f = tonumber(redis.call('HGET', KEYS[i], 'f') or '0')
  local u = tonumber(redis.call('HGET', KEYS[i], 'u') or '0')
  -- A counter without delays or cap only counts (Policy.refuses).
  if (cap > 0 and f >= cap) or (max_delay > 0 and u > now) then
    return false
  end
  if gate >= 0 and f >= gate then
    gated = true
  end
end
if gated then
  return 'gated'
end
local counts = {}
for i = 1, #KEYS do
  local free = tonumber(ARGV[5 * i - 3])
  local max_delay = tonumber(ARGV[5 * i - 2])
  local cap = tonumber(ARGV[5 * i - 1])
  local ttl = tonumber(ARGV[5 * i])
  local f = redis.call('HINCRBY', KEYS[i], 'f', 1)
  if cap > 0 and f >= cap then
    redis.call('HSET', KEYS[i], 'u', 0)
    redis.call('PERSIST', KEYS[i])
  else
    local until_ = 0
    if f > free then
      until_ = now + math.min(2 ^ math.min(f - free - 1, 30), max_delay)
    end
    redis.call('HSET', KEYS[i], 'u', tostring(until_))
    if ttl > 0 then
      redis.call('EXPIRE', KEYS[i], ttl)
    else
      redis.call('PERSIST', KEYS[i])
    end
  end
  counts[i] = f
end
return counts
"""

# KEYS[1]: the counter. ARGV: free, hard_cap (0: none), ttl (0: never forgotten).
_REFUND = """
local f = tonumber(redis.call('HGET', KEYS[1], 'f') or '0')
if f > 0 then
  f = redis.call('HINCRBY', KEYS[1], 'f', -1)
  if f <= tonumber(ARGV[1]) then
    redis.call('HSET', KEYS[1], 'u', 0)
  end
  -- Taken back from its cap, the key is forgotten after its quiet period again, as the
  -- database forgets it from the attempt's time.
  local cap = tonumber(ARGV[2])
  local ttl = tonumber(ARGV[3])
  if cap > 0 and f + 1 == cap and ttl > 0 then
    redis.call('EXPIRE', KEYS[1], ttl)
  end
end
return f
"""


def _ttl(policy: Policy) -> int:
    return 0 if policy.forget_after is None else int(policy.forget_after.total_seconds())


class RedisStore:
    """Counters in Redis, shared by every replica; each attempt is one atomic script."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._attempt = client.register_script(_ATTEMPT)
        self._refund = client.register_script(_REFUND)

    def attempt(self, db: Session, limits: Sequence[Limit], now: datetime) -> dict[str, int] | None:
        counts = self.attempt_gated(db, limits, now, {})
        return None if isinstance(counts, Refused) else counts

    def attempt_gated(
        self, db: Session, limits: Sequence[Limit], now: datetime, gates: Mapping[str, int]
    ) -> dict[str, int] | Refused:
        args: list[float | int] = [now.timestamp()]
        for limit in limits:
            policy = limit.policy
            gate = gates.get(limit.key, -1)
            args += [policy.free, policy.max_delay, policy.hard_cap or 0, _ttl(policy), gate]
        counts = self._attempt(keys=[_REDIS_PREFIX + limit.key for limit in limits], args=args)
        if counts is None:
            return Refused.LOCKED
        if not isinstance(counts, list):
            return Refused.GATED
        return {limit.key: int(count) for limit, count in zip(limits, counts, strict=True)}

    def reset(self, db: Session, limit: Limit) -> None:
        self.client.delete(_REDIS_PREFIX + limit.key)

    def refund(self, db: Session, limit: Limit, now: datetime) -> None:
        policy = limit.policy
        args = [policy.free, policy.hard_cap or 0, _ttl(policy)]
        self._refund(keys=[_REDIS_PREFIX + limit.key], args=args)

    def state(self, db: Session, limit: Limit, now: datetime) -> State:
        fields = self.client.hmget(_REDIS_PREFIX + limit.key, ["f", "u"])
        failures = int(fields[0] or 0)
        until = float(fields[1] or 0)
        locked_until = datetime.fromtimestamp(until, UTC) if until else None
        return State(failures, locked_until, limit.policy.hard_locked(failures))


_DATABASE_STORE = DatabaseStore()


@functools.cache
def _redis_store(url: str) -> RedisStore:
    # One connection pool per process and URL; short timeouts: a sign-in waits on it.
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    return RedisStore(client)


def store_for(settings: Settings) -> Store:
    if settings.redis_url:
        return _redis_store(settings.redis_url)
    return _DATABASE_STORE


def settle(
    store: Store,
    db: Session,
    *,
    reset: Sequence[Limit] = (),
    refund: Sequence[Limit] = (),
    now: datetime,
) -> None:
    """After a success: forget the ``reset`` keys and take back one attempt on each of the
    ``refund`` ones, in key order. That is the order :meth:`DatabaseStore.attempt` locks
    counters in, so a concurrent attempt sharing a counter (the same address, birth date
    or record) waits its turn instead of deadlocking with this transaction."""
    work = [(limit.key, 0, limit) for limit in reset] + [(limit.key, 1, limit) for limit in refund]
    for _, kind, limit in sorted(work, key=lambda item: (item[0], item[1])):
        if kind == 0:
            store.reset(db, limit)
        else:
            store.refund(db, limit, now)


def purge_stale(runtime: Runtime) -> None:
    """The worker's hourly job: drop database counters no policy remembers any more
    (Redis expires its own keys)."""
    with runtime.sessions.begin() as db:
        _DATABASE_STORE.purge(db, utcnow())


# Forgot password (identity/flows/reset.py). Requests for a link, per client address:
# delays after 20, like sign-ups. E-mails per address: the one budget of every identity
# e-mail (EMAIL_TO, below), gated by the flow at CAREBRIDGE_EMAILS_PER_ADDRESS_PER_HOUR;
# a gated request writes nothing, so a flood cannot keep the count from being forgotten
# an hour after the last e-mail. Presenting a link, per client address (delays after
# 20) and per account whose link was named (delays after 4).
RESET_REQUEST_ADDRESS = Policy(
    "reset-ip", free=20, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
RESET_TOKEN_ADDRESS = Policy(
    "reset-token-ip", free=20, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
RESET_TOKEN_ACCOUNT = Policy(
    "reset-token", free=4, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
# None of them locks for good: purge may drop their counters however high.
_NEVER_CAPPED = (
    *_NEVER_CAPPED,
    RESET_REQUEST_ADDRESS,
    RESET_TOKEN_ADDRESS,
    RESET_TOKEN_ACCOUNT,
)

# E-mail verification (identity/email_verification.py). E-mails to one address (keyed by
# its login lookup hash): counted, never refusing by themselves (the flow compares the
# count with CAREBRIDGE_EMAILS_PER_ADDRESS_PER_HOUR), forgotten after a quiet hour. Codes
# per account: 10 free, then doubling delays to 15 minutes, never a lock (a stranger
# holding a pending state must not keep the owner out). Codes and links per client
# address: 20 free, the same delays.
EMAIL_TO = Policy("email-to", free=0, max_delay=0, hard_cap=None, forget_after=timedelta(hours=1))
EMAIL_CODE_ACCOUNT = Policy(
    "email-code", free=10, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=24)
)
EMAIL_CODE_ADDRESS = Policy(
    "email-code-ip", free=20, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
# None of them is capped: purge drops them once quiet, whatever they count.
_NEVER_CAPPED = (*_NEVER_CAPPED, EMAIL_TO, EMAIL_CODE_ACCOUNT, EMAIL_CODE_ADDRESS)

# Lost second factor (identity/recovery.py). Starting a recovery, presenting its link,
# code or "this wasn't me" link: per client address 20 free, per account 5 free, then
# doubling delays to 15 minutes; never a lock (a stranger must not keep the owner out).
# Date of birth and SSN last 4 are counted by the roster's own policies (VERIFY_*).
RECOVERY_ADDRESS = Policy(
    "recovery-ip", free=20, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
RECOVERY_ACCOUNT = Policy(
    "recovery", free=5, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=24)
)
_NEVER_CAPPED = (*_NEVER_CAPPED, RECOVERY_ADDRESS, RECOVERY_ACCOUNT)

# Changing the e-mail address (identity/email_change.py). Asking for a change, per
# account (5 free, then delays: each request e-mails someone) and per client address (20
# free); the codes and links that confirm it count under EMAIL_CODE_ACCOUNT/ADDRESS like
# every verification, and its e-mails under EMAIL_TO. The undo link, per client address
# (20 free) and per account whose link was named (4 free), as reset links are.
EMAIL_CHANGE_ACCOUNT = Policy(
    "email-change", free=5, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
EMAIL_CHANGE_ADDRESS = Policy(
    "email-change-ip", free=20, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
EMAIL_UNDO_ADDRESS = Policy(
    "email-undo-ip", free=20, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
EMAIL_UNDO_ACCOUNT = Policy(
    "email-undo", free=4, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
# None of them locks for good: purge may drop their counters however high.
_NEVER_CAPPED = (
    *_NEVER_CAPPED,
    EMAIL_CHANGE_ACCOUNT,
    EMAIL_CHANGE_ADDRESS,
    EMAIL_UNDO_ADDRESS,
    EMAIL_UNDO_ACCOUNT,
)

# Changing the password while signed in (identity/flows/password_change.py): every
# attempt counts, before the new password is hashed, per account (5 free, then doubling
# delays to 15 minutes: each change hashes, ends sessions and e-mails a notice) and per
# client address (20 free), refused with the same uniform "too many attempts" as sign-in.
# Regenerating recovery codes (identity/flows/account.py), per account: 5 free, then the
# same delays (each one e-mails a notice and ends the other sessions). Never a lock: a
# stranger with a stolen session must not keep the owner out for good.
PASSWORD_CHANGE_ACCOUNT = Policy(
    "password-change", free=5, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
PASSWORD_CHANGE_ADDRESS = Policy(
    "password-change-ip", free=20, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
RECOVERY_CODES_ACCOUNT = Policy(
    "recovery-codes", free=5, max_delay=15 * 60, hard_cap=None, forget_after=timedelta(hours=1)
)
_NEVER_CAPPED = (
    *_NEVER_CAPPED,
    PASSWORD_CHANGE_ACCOUNT,
    PASSWORD_CHANGE_ADDRESS,
    RECOVERY_CODES_ACCOUNT,
)

# The policies whose counters are keyed "<prefix>:<account ID>": deleting the account
# deletes them (identity/deletion.py), in either store. The second step's own policy
# (identity/flows/mfa.py) is added there.
KEYED_BY_ACCOUNT: tuple[Policy, ...] = (
    VERIFY_ACCOUNT,
    ACTIVATE_ACCOUNT,
    RESET_TOKEN_ACCOUNT,
    EMAIL_CODE_ACCOUNT,
    RECOVERY_ACCOUNT,
    EMAIL_CHANGE_ACCOUNT,
    EMAIL_UNDO_ACCOUNT,
    PASSWORD_CHANGE_ACCOUNT,
    RECOVERY_CODES_ACCOUNT,
)


def account_limit(policy: Policy, account_id: str) -> Limit:
    return Limit(policy, f"{policy.prefix}:{account_id}")


def forget_account(
    store: Store, db: Session, account_id: str, policies: Sequence[Policy] = KEYED_BY_ACCOUNT
) -> None:
    """Delete every counter keyed by ``account_id`` (in key order, as attempts lock)."""
    limits = [account_limit(policy, account_id) for policy in policies]
    settle(store, db, reset=limits, now=utcnow())
