"""The one retry policy of every channel: exponential backoff with jitter, then a stop.

The outbox's own rows and sms's notifications both wait :meth:`RetryPolicy.backoff`
after a transient failure, and stop after ``max_attempts`` (``CAREBRIDGE_SMS_MAX_ATTEMPTS``,
named for the first channel that had it; it applies to all).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from carebridge.settings import Settings


@dataclass(frozen=True)
class RetryPolicy:
    base: timedelta = timedelta(seconds=30)
    cap: timedelta = timedelta(hours=1)
    max_attempts: int = 8

    @classmethod
    def for_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(max_attempts=settings.sms_max_attempts)

    def backoff(self, attempts: int, rng: Callable[[], float] = random.random) -> timedelta:
        """base·2^(n-1), capped, times a factor in [0.5, 1.5): retries of many rows that
        failed together (a provider outage) spread out instead of coming back at once."""
        exponent = min(max(attempts - 1, 0), 20)
        delay: timedelta = min(self.base * (2**exponent), self.cap)
        return delay * (0.5 + rng())

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts


DEFAULT = RetryPolicy()
