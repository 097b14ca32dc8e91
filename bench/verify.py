"""Verification latency against a large roster on PostgreSQL (goal: p99 < 20 ms).

Imports N synthetic rows (bench/roster_import.py's generator, clearly fake people) into a
fresh PostgreSQL database, then times identity.flows.verify.verify, the whole service
call (throttle counters, the indexed identity-hash lookup, the link, the audit record),
for K accounts that verify successfully and K that give a wrong SSN last 4; then, with
every birth date stepped up (``verify_step_up_after=0``), K that verify with last name and
ZIP as well and K that are asked for them (nothing counted, the roster not read).
Each attempt comes from its own address and DOB so the throttles measure their cost
without locking. HTTP adds the shell's ~1 ms (bench/http_shell.py). Usage:
    .venv/bin/python bench/verify.py [--rows 1000000] [--attempts 300]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

from roster_import import drop, fresh_database, generate

from carebridge import migrate
from carebridge.db import transaction
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from carebridge.wiring import CareTeamFollowers
from identity.flows.verify import Result, VerifyDetails, verify
from identity.models import Account, new_id
from identity.roster import importer


def people(path: Path, count: int) -> list[dict[str, str]]:
    """The first ``count`` rows with distinct dates of birth."""
    chosen: dict[str, dict[str, str]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            chosen.setdefault(row["dob"], row)
            if len(chosen) == count:
                break
    return list(chosen.values())


def percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100)
    return f"p50 {cuts[49] * 1000:6.2f} ms  p99 {cuts[98] * 1000:6.2f} ms  (n={len(samples)})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--attempts", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        url, name = fresh_database("postgresql", directory)
        try:
            rt = Runtime.build(Settings(data_dir=Path(directory), database_url=url))
            migrate.upgrade(rt.engine)
            csv_path = Path(directory) / "roster.csv"
            generate(csv_path, args.rows)
            started = time.perf_counter()
            importer.import_roster(rt, csv_path, source="bench", followers=CareTeamFollowers())
            print(f"roster: {args.rows} rows imported in {time.perf_counter() - started:.1f} s")
            targets = people(csv_path, 4 * args.attempts)
            accounts = [new_id("acc") for _ in targets]
            with transaction(rt.sessions) as db:
                now = datetime.now(UTC)
                db.add_all(Account(id=a, created_at=now, status="active") for a in accounts)
            stepped = Runtime.build(
                Settings(data_dir=Path(directory), database_url=url, verify_step_up_after=0)
            )
            timings: dict[str, list[float]] = {}
            for n, (account, person) in enumerate(zip(accounts, targets, strict=True)):
                step_up, right = n >= 2 * args.attempts, n % 2 == 0
                ssn4 = person["ssn4"] if right else f"{(int(person['ssn4']) + 1) % 10000:04d}"
                details = VerifyDetails(
                    dob=date.fromisoformat(person["dob"]),
                    ssn4=ssn4 if not step_up else person["ssn4"],
                    last_name=person["last_name"] if right or not step_up else "",
                    zip=person["zip"] if step_up and right else "",
                )
                host = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
                started = time.perf_counter()
                result = verify(stepped if step_up else rt, account, details, client_host=host)
                elapsed = time.perf_counter() - started
                if step_up:
                    expected = Result.VERIFIED if right else Result.NEED_MORE_PROOF
                else:
                    expected = Result.VERIFIED if right else Result.FAILED
                assert result is expected, (n, result)
                label = f"{'stepped up, ' if step_up else ''}{expected.value}"
                timings.setdefault(label, []).append(elapsed)
            for outcome, samples in timings.items():
                print(f"verify ({outcome:27}) on {args.rows} rows: {percentiles(samples)}")
            print("goal: p99 < 20 ms")
            stepped.close()
            rt.close()
        finally:
            if name:
                drop(name)


if __name__ == "__main__":
    main()
