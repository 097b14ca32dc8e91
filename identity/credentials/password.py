"""Passwords: the NIST SP 800-63B policy, and Argon2id hashing (RFC 9106).

Policy (SP 800-63B §3.1.1.2, "memorized secrets"):

- A password is compared as its Unicode NFKC form: the same characters typed on another
  keyboard or phone are the same password. Nothing is stripped or collapsed; spaces count.
- At least ``settings.password_min_length`` characters (default 8), at most
  :data:`MAX_LENGTH` (1,024, well past the 64 NIST asks us to accept; the cap bounds
  the work one request can ask for).
- No composition rules, no hints, no expiry.
- Refused: passwords on the blocklist shipped beside this module (commonly used ones,
  compared case-insensitively), and passwords containing the login identifier.

Hashing uses argon2-cffi's ``PasswordHasher`` with the parameters from settings. A
successful check reports when the stored hash used other parameters, so sign-in can
store a fresh one (:attr:`Checked.new_hash`). An unknown login is checked against a dummy
hash made with the same parameters: "no such account" costs what a wrong password costs.

Argon2 is CPU and memory bound: call these functions from the thread pool, never on the
event loop. They hand the hashing itself to a small pool of their own, one thread per CPU
the process may use (more would only share the same cores while holding their memory),
whose threads run at a lower scheduling priority (nice +10): hashing soaks up idle CPU
but never makes the event loop, and so /healthz or a page, wait behind a burst of sign-ins.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from carebridge.i18n import N_
from carebridge.settings import Settings

MAX_LENGTH = 1024
# The part of an email address before "@" counts as the identifier too once it is this long
# (shorter ones, "al" or "jo", are too likely to occur by chance).
_MIN_LOCAL_PART = 5
_NICE = 10

TOO_COMMON = N_(
    "This password is too common, so it would be easy to guess. "
    "Choose another: three or four random words make a strong one."
)
CONTAINS_LOGIN = N_("Your password must not contain your email address.")


def normalise(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


@functools.cache
def blocklist() -> frozenset[str]:
    text = (
        resources.files("identity.credentials")
        .joinpath("password_blocklist.txt")
        .read_text("utf-8")
    )
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def policy_problem(password: str, *, login: str, min_length: int) -> str | None:
    """Why a new password is refused, in words for its owner; None if it is acceptable.

    ``login`` is the normalised login identifier (see :func:`identity.accounts.normalise_login`).
    """
    candidate = normalise(password)
    if len(candidate) < min_length:
        return f"Your password must be at least {min_length} characters long."
    if len(candidate) > MAX_LENGTH:
        return f"Your password must be at most {MAX_LENGTH} characters long."
    folded = candidate.casefold()
    if folded in blocklist() or candidate.lower() in blocklist():
        return TOO_COMMON
    local_part = login.rpartition("@")[0]
    if login and (login in folded or (len(local_part) >= _MIN_LOCAL_PART and local_part in folded)):
        return CONTAINS_LOGIN
    return None


@functools.cache
def _hasher(time_cost: int, memory_kib: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(
        time_cost=time_cost,
        memory_cost=memory_kib,
        parallelism=parallelism,
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )


def hasher(settings: Settings) -> PasswordHasher:
    return _hasher(
        settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
    )


def _lower_priority() -> None:
    # On Linux a thread's nice value is its own: setpriority() on its thread ID.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=max(1, len(os.sched_getaffinity(0))),
        thread_name_prefix="argon2",
        initializer=_lower_priority,
    )


def _hash(ph: PasswordHasher, secret: str) -> str:
    return _pool().submit(ph.hash, secret).result()


def _verify(ph: PasswordHasher, stored: str, secret: str) -> None:
    _pool().submit(ph.verify, stored, secret).result()


@functools.cache
def _dummy_hash(ph: PasswordHasher) -> str:
    # A hash of a random value nobody knows, with the current parameters.
    return _hash(ph, secrets.token_urlsafe(32))


def hash_password(settings: Settings, password: str) -> str:
    """The Argon2id string to store for a new password (call it from the thread pool)."""
    return _hash(hasher(settings), normalise(password))


@dataclass(frozen=True)
class Checked:
    ok: bool
    # When ok and the stored hash used other parameters: the hash to store instead.
    new_hash: str | None = None


def verify(settings: Settings, stored: str | None, password: str) -> Checked:
    """Check a password against a stored hash, or (``stored=None``) against the dummy hash,
    at the same cost. Never raises for a wrong password or a malformed hash."""
    ph = hasher(settings)
    target = stored if stored is not None else _dummy_hash(ph)
    try:
        _verify(ph, target, normalise(password))
    except (VerificationError, InvalidHashError):
        return Checked(ok=False)
    if stored is None:  # pragma: no cover  (nobody knows the dummy's password)
        return Checked(ok=False)
    if ph.check_needs_rehash(stored):
        return Checked(ok=True, new_hash=hash_password(settings, password))
    return Checked(ok=True)
