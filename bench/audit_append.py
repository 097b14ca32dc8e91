"""Audit-log append throughput, one writer and several, on SQLite and PostgreSQL.

Every append is its own transaction (the worst case: a request that records one event).
Prints figures; asserts nothing. Usage:
    .venv/bin/python bench/audit_append.py [--count 2000] [--writers 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
import uuid

from sqlalchemy import create_engine, text

from carebridge import audit, migrate
from carebridge.audit import Outcome
from carebridge.db import make_engine, make_sessionmaker, transaction

POSTGRES = os.environ.get(
    "CAREBRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def writer(url: str, count: int) -> None:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    for n in range(count):
        with transaction(sessions) as session:
            audit.append(
                session, actor="system:bench", action=f"bench.{n}", outcome=Outcome.ALLOWED
            )
    engine.dispose()


def run(url: str, count: int, writers: int) -> float:
    context = multiprocessing.get_context("spawn")
    each = count // writers
    processes = [context.Process(target=writer, args=(url, each)) for _ in range(writers)]
    started = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - started
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        result = audit.verify(session)
    engine.dispose()
    assert result.intact, result.reason
    return each * writers / elapsed


def fresh_database(backend: str, directory: str) -> tuple[str, str | None]:
    if backend == "sqlite":
        return f"sqlite:///{directory}/{uuid.uuid4().hex}.db", None
    name = f"cb_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return POSTGRES.rsplit("/", 1)[0] + f"/{name}", name


def drop(name: str) -> None:
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--writers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        for backend in ("sqlite", "postgresql"):
            for writers in (1, args.writers):
                url, name = fresh_database(backend, directory)
                engine = make_engine(url)
                migrate.upgrade(engine)
                engine.dispose()
                rate = run(url, args.count, writers)
                print(f"{backend:10} writers={writers}  {rate:8.0f} appends/s (chain verified)")
                if name:
                    drop(name)


if __name__ == "__main__":
    main()
