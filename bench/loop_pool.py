"""The event loop's PostgreSQL pool side by side: carebridge's own (carebridge.db.loop_pool,
"hand-made") and asyncpg's (``asyncpg.create_pool``), as a token grant uses them.

Each request takes a connection, runs a lookup by primary key, does ``--work-us`` of
Python work holding it (as Authlib builds the answer), runs a second statement, and gives
the connection back, as identity.oidc.token_fast_path answers a grant on the event loop. Requests
arrive at a fixed rate (open loop: the same throughput for both, ``--load`` of the
hand-made pool's measured most), and each is timed from its arrival, so time spent queued
for a connection counts. The two pools alternate, ``--rounds`` times each, in one run:
the machine is shared, and a neighbour's burst lands on both alike. Printed per round:
requests per second, this process's CPU per request (utime + stime: the pool's work and
the driver's; the database's is the same SQL for both) and p50/p99 latency; then, for
each round, asyncpg / hand-made ratios, and their medians.

asyncpg's pool is given what carebridge needs of it: the same size, budget, server
settings and statement clock; no reset query on release (``reset=``: the statements
leave no session state, and the default reset would be a third round trip per request);
a connection whose block raised closed rather than reused (as the hand-made one does).

Usage:
    .venv/bin/python bench/loop_pool.py [--database-url postgresql://...] [--rounds 5]
        [--seconds 4] [--concurrency 16] [--work-us 300] [--load 0.6]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

# bench/ holds scripts named like the packages (messaging.py): import the packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import asyncpg  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from carebridge.db import Budget, LoopConnections  # noqa: E402
from carebridge.runtime import LOOP_CONNECTIONS  # noqa: E402

DEFAULT_POSTGRES = os.environ.get(
    "CAREBRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
LOOKUP = "SELECT oid, relname, relkind FROM pg_class WHERE oid = $1"
CLAIM = "SELECT $1::text, now()"


class Pool(Protocol):
    def connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]: ...

    async def close(self) -> None: ...


class AsyncpgPool:
    """asyncpg.create_pool, as carebridge would use it (see the module's docstring)."""

    def __init__(self, dsn: str, size: int, budget: Budget) -> None:
        self._dsn, self._size, self._budget = dsn, size, budget
        self._pool: asyncpg.Pool | None = None

    async def _keep(self, _connection: asyncpg.Connection) -> None:
        """No reset query: nothing these statements do outlives them."""

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self._size,
            timeout=self._budget.seconds,
            command_timeout=self._budget.client_seconds,
            server_settings={
                "application_name": "carebridge-loop",
                **self._budget.server_settings(),
            },
            reset=self._keep,
        )

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        assert self._pool is not None
        async with self._pool.acquire(timeout=self._budget.seconds) as connection:
            try:
                yield connection
            except BaseException:
                connection.terminate()  # its state unknown: never reused
                raise

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


def _busy(microseconds: float) -> None:
    end = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < end:
        pass


async def _request(pool: Pool, oid: int, work_us: float) -> None:
    async with pool.connection() as connection:
        await connection.fetch(LOOKUP, oid)
        _busy(work_us)
        await connection.fetch(CLAIM, "claimed")


async def _closed_loop(pool: Pool, seconds: float, concurrency: int, work_us: float) -> float:
    """Requests per second with ``concurrency`` always waiting: the pool's most."""
    done = 0
    end = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < end:
            await _request(pool, 1259, work_us)
            done += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done / seconds


async def _open_loop(pool: Pool, seconds: float, rate: float, work_us: float) -> dict[str, float]:
    """Requests arriving every 1/rate s; each timed from its arrival."""
    latencies: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(arrival: float) -> None:
        await _request(pool, 1259, work_us)
        latencies.append(time.perf_counter() - arrival)

    cpu, start = time.process_time(), time.perf_counter()
    n = 0
    while (now := time.perf_counter()) - start < seconds:
        due = start + n / rate
        if now < due:
            await asyncio.sleep(due - now)
        task = asyncio.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    await asyncio.gather(*tasks)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    latencies.sort()
    return {
        "rps": len(latencies) / took,
        "cpu_us": cpu / len(latencies) * 1e6,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }


async def main(arguments: argparse.Namespace) -> None:
    url = make_url(arguments.database_url)
    budget = Budget()
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    handmade = LoopConnections(url, LOOP_CONNECTIONS, budget)
    assert handmade.usable()
    library = AsyncpgPool(dsn, LOOP_CONNECTIONS, budget)
    await library.start()
    pools: dict[str, Callable[[], Pool]] = {
        "hand-made": lambda: handmade,
        "asyncpg": lambda: library,
    }
    work, seconds = arguments.work_us, arguments.seconds
    # Warm both (connections made, statements prepared), then find the most each takes.
    most = {}
    for name, pool in pools.items():
        await _closed_loop(pool(), 1.0, arguments.concurrency, work)
        most[name] = await _closed_loop(pool(), seconds, arguments.concurrency, work)
        print(f"{name:>9}: at most {most[name]:7.0f} req/s ({arguments.concurrency} waiting)")
    rate = arguments.load * min(most.values())
    print(f"open loop at {rate:.0f} req/s, {LOOP_CONNECTIONS} connections, {work:.0f} µs work")
    ratios: dict[str, list[float]] = {"cpu_us": [], "p50_ms": [], "p99_ms": [], "rps": []}
    for round_ in range(1, arguments.rounds + 1):
        results: dict[str, dict[str, float]] = {}
        order = list(pools) if round_ % 2 else list(reversed(pools))
        for name in order:
            results[name] = await _open_loop(pools[name](), seconds, rate, work)
            r = results[name]
            print(
                f"round {round_} {name:>9}: {r['rps']:7.0f} req/s {r['cpu_us']:7.1f} µs cpu/req"
                f"  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms"
            )
        for key, values in ratios.items():
            values.append(results["asyncpg"][key] / results["hand-made"][key])
        print(
            f"round {round_} asyncpg/hand-made: "
            + "  ".join(f"{key} {values[-1]:.3f}" for key, values in ratios.items())
        )
    print(
        "median asyncpg/hand-made: "
        + "  ".join(f"{key} {statistics.median(values):.3f}" for key, values in ratios.items())
    )
    await handmade.close()
    await library.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--work-us", type=float, default=300.0)
    parser.add_argument("--load", type=float, default=0.6)
    arguments: Any = parser.parse_args()
    asyncio.run(main(arguments))
