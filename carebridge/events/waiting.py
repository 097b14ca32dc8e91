"""How many feed requests may wait at once (long polling), per client and in all.

A waiting request costs a task and a look at the database every half second; without
a bound one client opening many could starve the thread pool every other request
shares. Past either bound the request is answered 429 with ``Retry-After`` instead of
waiting. Counted per process, on the event loop (no lock: no thread touches it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class TooManyWaitingError(Exception):
    """This client, or the process, already has as many waiting requests as allowed."""


class Waiting:
    def __init__(self, *, per_client: int, total: int) -> None:
        self.per_client = per_client
        self.total = total
        self.by_client: Counter[str] = Counter()

    @contextmanager
    def slot(self, client_id: str) -> Iterator[None]:
        if self.by_client[client_id] >= self.per_client or self.by_client.total() >= self.total:
            raise TooManyWaitingError
        self.by_client[client_id] += 1
        try:
            yield
        finally:
            self.by_client[client_id] -= 1
            if not self.by_client[client_id]:
                del self.by_client[client_id]
