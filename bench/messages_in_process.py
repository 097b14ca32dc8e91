"""Secure message POST and GET, CPU microseconds per request, in process, on PostgreSQL.

The same database, threads and app token as bench/messages.py (its ``setup``), but the
ASGI app is driven directly (httpx's ASGI transport, 8 requests at a time, after 300
warm-up requests): no wrk, no uvicorn, no scheduler hop between processes, so the figure
(``time.process_time`` over the measured requests: every thread of the process, the
audit chainer included) moves little with the machine's load, unlike requests per
second. For comparing two commits: run it from each checkout, alternating, in one run.
Usage (from the repository's root):
    .venv/bin/python -P bench/messages_in_process.py [--requests 3000] [--path post|get]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

WARM_UP = 300
CONCURRENCY = 8
BENCH = Path.cwd() / "bench"


def _messages_bench():  # type: ignore[no-untyped-def]
    """bench/messages.py of the checkout run from (its setup makes the data)."""
    sys.path.insert(0, str(BENCH))  # its own import of http_shell (it takes it off again)
    spec = importlib.util.spec_from_file_location("bench_messages", BENCH / "messages.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def drive(path: str, thread_ids: list[str], token: str, requests: int) -> float:
    import httpx  # noqa: PLC0415

    from carebridge.app import create_app  # noqa: PLC0415
    from carebridge.runtime import Runtime  # noqa: PLC0415
    from carebridge.settings import load_settings  # noqa: PLC0415

    runtime = Runtime.build(load_settings())
    app = create_app(runtime)
    headers = {"Authorization": f"Bearer {token}"}
    body = {"body": "Your results came back normal. " * 10}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000"
        ) as client,
    ):

        async def one(n: int) -> None:
            thread = thread_ids[n % len(thread_ids)]
            if path == "post":
                response = await client.post(
                    f"/api/v1/messaging/threads/{thread}/messages", json=body, headers=headers
                )
            else:
                response = await client.get(
                    f"/api/v1/messaging/threads/{thread}?limit=20", headers=headers
                )
            assert response.status_code < 300, response.text

        async def run(count: int) -> None:
            queue = iter(range(count))

            async def worker() -> None:
                for n in queue:
                    await one(n)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

        await run(WARM_UP)
        start = time.process_time()
        await run(requests)
        return (time.process_time() - start) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--path", choices=("post", "get"), default="post")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "CAREBRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    from sqlalchemy import create_engine, text  # noqa: PLC0415
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    name = f"cb_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.postgres).set(database=name).render_as_string(hide_password=False)
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            thread_ids, token = _messages_bench().setup(url, data_dir)
            os.environ["CAREBRIDGE_LOG_LEVEL"] = "WARNING"
            cpu = asyncio.run(drive(args.path, thread_ids, token, args.requests))
            print(f"{args.path} {cpu:.0f} CPU us/req ({args.requests} requests)")
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
