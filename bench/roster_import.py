"""Roster import throughput: N synthetic (clearly fake) rows, on PostgreSQL and SQLite.

Each backend gets a fresh, migrated database; the import runs in a child process so its
peak RSS is its own. Prints rows/s, seconds and peak RSS; asserts only the row count.
Usage:
    .venv/bin/python bench/roster_import.py [--rows 1000000] [--backend postgresql|sqlite|both]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import random
import resource
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import create_engine, func, select, text

from carebridge import migrate
from carebridge.db import make_engine
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from carebridge.wiring import CareTeamFollowers
from identity.models import RosterMember
from identity.roster import importer

POSTGRES = os.environ.get(
    "CAREBRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
FIRST = ["Testy", "Fakey", "Sample", "Dummy", "Mocky", "Placeholder", "Synthia", "Benchley"]
LAST = ["McTestface", "Fakerson", "Samplesworth", "Dummington", "Notreal", "Benchmarkov"]


def generate(path: Path, rows: int) -> None:
    rng = random.Random(4)
    start = date(1930, 1, 1)
    with path.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["first_name", "last_name", "dob", "ssn4", "zip", "group", "member_id"])
        for n in range(rows):
            out.writerow(
                [
                    rng.choice(FIRST),
                    f"{rng.choice(LAST)}-{n % 977}",
                    (start + timedelta(days=rng.randrange(27000))).isoformat(),
                    f"{rng.randrange(10000):04d}",
                    f"{rng.randrange(100000):05d}",
                    f"BenchGroup{n % 50}",
                    f"BENCH-{n:08d}",
                ]
            )


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


def child(url: str, data_dir: str, csv_path: str, queue: multiprocessing.Queue[float]) -> None:
    rt = Runtime.build(Settings(data_dir=Path(data_dir), database_url=url))
    rt.keyring  # noqa: B018  (key generation is not part of the import)
    started = time.perf_counter()
    importer.import_roster(rt, Path(csv_path), source="bench", followers=CareTeamFollowers())
    queue.put(time.perf_counter() - started)
    rt.close()


def run(backend: str, directory: str, csv_path: Path, rows: int) -> None:
    url, name = fresh_database(backend, directory)
    try:
        engine = make_engine(url)
        migrate.upgrade(engine)
        context = multiprocessing.get_context("spawn")
        queue: multiprocessing.Queue[float] = context.Queue()
        process = context.Process(
            target=child, args=(url, f"{directory}/data-{backend}", str(csv_path), queue)
        )
        process.start()
        seconds = queue.get()
        process.join()
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        with engine.connect() as connection:
            stored = connection.scalar(select(func.count()).select_from(RosterMember))
        engine.dispose()
        assert stored == rows, (stored, rows)
        print(
            f"{backend:10} {rows:>9,} rows  {seconds:7.1f} s  {rows / seconds:9,.0f} rows/s  "
            f"peak RSS {peak_mib:6.0f} MiB (largest child so far)"
        )
    finally:
        if name:
            drop(name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=["postgresql", "sqlite", "both"], default="both")
    args = parser.parse_args()
    backends = ["postgresql", "sqlite"] if args.backend == "both" else [args.backend]
    with tempfile.TemporaryDirectory() as directory:
        csv_path = Path(directory) / "roster.csv"
        started = time.perf_counter()
        generate(csv_path, args.rows)
        size = csv_path.stat().st_size / 2**20
        print(
            f"generated {args.rows:,} rows ({size:.0f} MiB) "
            f"in {time.perf_counter() - started:.1f} s"
        )
        for backend in backends:
            run(backend, directory, csv_path, args.rows)


if __name__ == "__main__":
    main()
