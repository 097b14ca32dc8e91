"""Envelope encryption of a thread's content (ARCHITECTURE.md invariant 4).

Each thread has its own 256-bit data key, stored wrapped by the keyring's active KEK.
Subjects, bodies, attachment names and bytes are sealed under it with AES-256-GCM (a random
nonce each time, carebridge.keyring.seal). The associated data names the schema version, the
thread, the record and the field, so a ciphertext copied to another row, another field or
another thread does not open. Deleting the wrapped key (crypto-shredding) leaves nothing
that opens the content.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, cached_property
from weakref import WeakKeyDictionary

from cachetools import TLRUCache
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from carebridge.keyring import (
    DecryptionError,
    Keyring,
    associated_data,
    new_data_key,
    open_sealed,
    seal,
)
from messaging.models import Thread

SCHEMA_VERSION = "1"

SUBJECT = "subject"
BODY = "body"
FILENAME = "filename"
CONTENT = "content"
BREAK_GLASS_REASON = "break_glass_reason"


class ContentUnavailableError(Exception):
    """A thread's content cannot be opened. The message names IDs only."""


class ShreddedError(ContentUnavailableError):
    """The thread's data key was deleted (retention): the content is gone for good."""


class KeyUnavailableError(ContentUnavailableError):
    """The data key does not unwrap: the KEK that wrapped it is missing or not the same key."""


class TamperedError(ContentUnavailableError):
    """A ciphertext failed its integrity check (altered, or moved from another row)."""


def _key_context(thread_id: str) -> bytes:
    return associated_data("messaging.thread", SCHEMA_VERSION, thread_id)


def _content_context(thread_id: str, record_id: str, field_name: str) -> bytes:
    return associated_data("messaging.content", SCHEMA_VERSION, thread_id, record_id, field_name)


@cache
def _field_part(field_name: str) -> bytes:
    return associated_data(field_name)


@dataclass(frozen=True)
class ThreadCipher:
    thread_id: str
    key: bytes = field(repr=False)

    # A page of messages opens twenty records under one key: the AES-GCM object and the
    # thread's part of the associated data are made once (the bytes are the same as
    # _content_context's: length-prefixed parts simply concatenate).
    @cached_property
    def _aead(self) -> AESGCM:
        return AESGCM(self.key)

    @cached_property
    def _context_prefix(self) -> bytes:
        return associated_data("messaging.content", SCHEMA_VERSION, self.thread_id)

    def context(self, record_id: str, field_name: str) -> bytes:
        return self._context_prefix + associated_data(record_id) + _field_part(field_name)

    def seal(self, record_id: str, field_name: str, plaintext: bytes) -> bytes:
        return seal(self._aead, plaintext, self.context(record_id, field_name))

    def open(self, record_id: str, field_name: str, blob: bytes) -> bytes:
        try:
            return open_sealed(self._aead, blob, self.context(record_id, field_name))
        except DecryptionError:
            raise TamperedError(
                f"{field_name} of {record_id} in thread {self.thread_id} failed its integrity check"
            ) from None

    def opener(self, field_name: str) -> Callable[[str, bytes], str]:
        """``open_text`` for one field of many records (a page of bodies), with what does
        not change from record to record looked up once."""
        aead, prefix, part = self._aead, self._context_prefix, _field_part(field_name)

        def open_text(record_id: str, blob: bytes) -> str:
            try:
                aad = prefix + associated_data(record_id) + part
                return open_sealed(aead, blob, aad).decode("utf-8")
            except DecryptionError:
                raise TamperedError(
                    f"{field_name} of {record_id} in thread {self.thread_id} failed its "
                    "integrity check"
                ) from None

        return open_text

    def seal_text(self, record_id: str, field_name: str, text: str) -> bytes:
        return self.seal(record_id, field_name, text.encode("utf-8"))

    def open_text(self, record_id: str, field_name: str, blob: bytes) -> str:
        return self.open(record_id, field_name, blob).decode("utf-8")


@dataclass(frozen=True)
class WrappedKey:
    wrapped: bytes = field(repr=False)
    kek_id: str


def new_thread_key(keyring: Keyring, thread_id: str) -> tuple[ThreadCipher, WrappedKey]:
    key = new_data_key()
    wrapped = keyring.wrap_data_key(key, _key_context(thread_id))
    return ThreadCipher(thread_id, key), WrappedKey(wrapped, keyring.key_id_of(wrapped))


# Thread keys this process unwrapped lately, by keyring (one per runtime) and thread: a
# read or a post would otherwise unwrap the same key again on every request. An entry
# is used only with the wrapped key it came from: a reader compares it with the row it
# just read, and a writer claims a message number only while the thread still holds it
# (messaging.threads), so a re-wrapped or crypto-shredded thread is never opened or
# written under a stale entry. An entry is dropped KEY_CACHE_SECONDS after the key was
# unwrapped (by the next use of the cache, and by the web process's sweep, forget_expired),
# and at once when its thread is seen shredded; the bound keeps it small.
KEY_CACHE_SECONDS = 60.0
KEY_CACHE_SIZE = 4096


def _monotonic() -> float:
    # Looked up at each call, not bound once: the clock is this module's time.
    return time.monotonic()


def _key_expiry(_thread_id: str, _entry: tuple[bytes, ThreadCipher], now: float) -> float:
    return now + KEY_CACHE_SECONDS


class _RecentKeys:
    """Thread ID -> (wrapped key, cipher), each kept KEY_CACHE_SECONDS from its unwrap;
    when full, expired entries go first, then the least recently used. Requests use it
    from worker threads: one lock."""

    def __init__(self) -> None:
        self._entries: TLRUCache[str, tuple[bytes, ThreadCipher]] = TLRUCache(
            KEY_CACHE_SIZE, _key_expiry, timer=_monotonic
        )
        self._lock = threading.Lock()

    def get(self, thread_id: str, now: float) -> tuple[bytes, ThreadCipher] | None:
        with self._lock:
            self._entries.expire(now)
            return self._entries.get(thread_id)

    def put(self, thread_id: str, wrapped: bytes, cipher: ThreadCipher, now: float) -> None:
        with self._lock:
            self._entries.expire(now)
            self._entries[thread_id] = (wrapped, cipher)

    def drop(self, thread_id: str) -> None:
        with self._lock:
            self._entries.pop(thread_id, None)

    def forget_expired(self, now: float) -> None:
        with self._lock:
            self._entries.expire(now)


_recent: WeakKeyDictionary[Keyring, _RecentKeys] = WeakKeyDictionary()


def _recent_of(keyring: Keyring) -> _RecentKeys:
    found = _recent.get(keyring)
    if found is None:
        found = _recent.setdefault(keyring, _RecentKeys())
    return found


def recent_key(keyring: Keyring, thread_id: str) -> tuple[bytes, ThreadCipher] | None:
    """The wrapped key and cipher of a thread this process opened lately, if any."""
    return _recent_of(keyring).get(thread_id, time.monotonic())


def forget_expired() -> None:
    """Drop the keys past their time, of every keyring, even when no request comes."""
    now = time.monotonic()
    for recent in list(_recent.values()):
        recent.forget_expired(now)


def cipher_for(keyring: Keyring, thread: Thread) -> ThreadCipher:
    """The thread's cipher, or :class:`ShreddedError` / :class:`KeyUnavailableError`."""
    return open_thread_key(keyring, thread.id, thread.data_key_wrapped, thread.kek_id)


def open_thread_key(
    keyring: Keyring, thread_id: str, wrapped: bytes | None, kek_id: str | None
) -> ThreadCipher:
    recent = _recent_of(keyring)
    if wrapped is None:
        recent.drop(thread_id)
        raise ShreddedError(f"thread {thread_id} was crypto-shredded")
    now = time.monotonic()
    found = recent.get(thread_id, now)
    if found is not None and found[0] == wrapped:
        return found[1]
    try:
        key = keyring.unwrap_data_key(wrapped, _key_context(thread_id))
    except DecryptionError:
        raise KeyUnavailableError(
            f"the data key of thread {thread_id} does not unwrap: key-encryption key "
            f"{kek_id} is missing from the keyring or is not the key that wrapped it"
        ) from None
    cipher = ThreadCipher(thread_id, key)
    recent.put(thread_id, wrapped, cipher, now)
    return cipher


def rewrap(keyring: Keyring, thread: Thread) -> bool:
    """Wrap the thread's data key under the active KEK; False if it already was (or is
    shredded). Content rows are untouched: the data key itself does not change."""
    if thread.data_key_wrapped is None or thread.kek_id == keyring.active_kek.kid:
        return False
    cipher = cipher_for(keyring, thread)
    wrapped = keyring.wrap_data_key(cipher.key, _key_context(thread.id))
    thread.data_key_wrapped = wrapped
    thread.kek_id = keyring.key_id_of(wrapped)
    return True
