"""Password sign-ins per second per core through the whole HTTP stack, next to the raw
Argon2id verify rate measured in the same run, and /healthz latency during the burst.

Starts `carebridge serve` pinned to one core (taskset) on a free loopback port with a
throwaway data directory (SQLite) and the default Argon2 parameters, creates accounts
through POST /api/v1/signup, then drives POST /api/v1/signin with wrk (Debian package
`wrk`) pinned to the other core: once alone (throughput, and the server's CPU time from
/proc), once while a probe on that core times GET /healthz every 20 ms. The raw rate is
measured on the server's core just before and after the first burst. Both per wall-clock
second and per CPU-second are printed: on a shared machine the second is steadier.
Goals: sign-ins per core >= 85% of raw verifies per core; /healthz p99 < 50 ms.
Usage:
    .venv/bin/python bench/signin.py [--seconds 10] [--connections 4] [--accounts 16]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from http_shell import free_port, wait_until_up

PASSWORD = "bench passphrase of several words"  # noqa: S105
SERVER_CPU, CLIENT_CPU = "0", "1"

RAW_VERIFY = """
import sys, time
from argon2 import PasswordHasher
from carebridge.settings import Settings
s = Settings()
ph = PasswordHasher(time_cost=s.argon2_time_cost, memory_cost=s.argon2_memory_kib,
                    parallelism=s.argon2_parallelism, hash_len=32, salt_len=16)
stored = ph.hash(sys.argv[2])
ph.verify(stored, sys.argv[2])
deadline, n = time.perf_counter() + float(sys.argv[1]), 0
start, cpu = time.perf_counter(), time.process_time()
while time.perf_counter() < deadline:
    ph.verify(stored, sys.argv[2])
    n += 1
print(n / (time.perf_counter() - start), n / (time.process_time() - cpu))
"""

LUA = """
local n = tonumber(os.getenv("SIGNIN_ACCOUNTS"))
local password = os.getenv("SIGNIN_PASSWORD")
local bodies = {}
for i = 1, n do
  bodies[i] = string.format('{"login":"bench%d@example.org","password":"%s"}', i, password)
end
local i = 0
request = function()
  i = i % n + 1
  return wrk.format("POST", "/api/v1/signin", {["Content-Type"] = "application/json"}, bodies[i])
end
"""


def raw_verify_rate(seconds: float) -> tuple[float, float]:
    """Argon2id verifies per second on one core, with the settings' default parameters:
    per wall-clock second, and per second of CPU time."""
    output = subprocess.run(  # noqa: S603
        ["taskset", "-c", SERVER_CPU, sys.executable, "-c", RAW_VERIFY, str(seconds), PASSWORD],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    wall, cpu = output.split()
    return float(wall), float(cpu)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post_json(port: int, path: str, body: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = json.dumps(body)
        connection.request("POST", path, payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def create_accounts(port: int, count: int) -> None:
    for i in range(1, count + 1):
        body = {"login": f"bench{i}@example.org", "password": PASSWORD}
        status, text = post_json(port, "/api/v1/signup", body)
        assert status == 200, (status, text)


class HealthProbe(threading.Thread):
    """GET /healthz every ``interval`` seconds on one kept-alive connection."""

    def __init__(self, port: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.latencies: list[float] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                connection.request("GET", "/healthz")
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                ok = False
            elapsed = time.perf_counter() - started
            if ok:
                self.latencies.append(elapsed)
            else:
                self.errors += 1
            self.stop.wait(max(0.0, self.interval - elapsed))
        connection.close()

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def signin_burst(port: int, seconds: int, connections: int, accounts: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA)
    env = {**os.environ, "SIGNIN_ACCOUNTS": str(accounts), "SIGNIN_PASSWORD": PASSWORD}
    try:
        output = subprocess.run(  # noqa: S603
            [  # noqa: S607
                "taskset",
                "-c",
                CLIENT_CPU,
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                script.name,
                f"http://127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
    finally:
        Path(script.name).unlink()
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"99%\s+(\S+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    requests = re.search(r"(\d+) requests in", output)
    assert rate and p99 and requests, output
    return {
        "rate": float(rate[1]),
        "p99": p99[1],  # type: ignore[dict-item]
        "requests": float(requests[1]),
        "non_2xx": float(non_2xx[1]) if non_2xx else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=16, help="at most 20 (sign-up budget)")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/signin.py needs {tool} (Debian: apt-get install wrk util-linux)")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench/signin.py needs two cores: one for the server, one for the load")

    binary = Path(sys.executable).with_name("carebridge")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBRIDGE_")}
        env.update(CAREBRIDGE_DATA_DIR=directory, CAREBRIDGE_LOG_LEVEL="WARNING")
        server = subprocess.Popen(  # noqa: S603
            ["taskset", "-c", SERVER_CPU, str(binary), "serve", "--port", str(port)],  # noqa: S607
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_up(f"http://127.0.0.1:{port}/healthz")
            create_accounts(port, args.accounts)
            os.sched_setaffinity(0, {int(CLIENT_CPU)})
            # Throughput first, alone; then a second burst with the /healthz probe.
            # The raw rate just before and just after, averaged: the machine may be shared.
            before = raw_verify_rate(args.seconds / 2)
            cpu_before = cpu_seconds(server.pid)
            burst = signin_burst(port, args.seconds, args.connections, args.accounts)
            server_cpu = cpu_seconds(server.pid) - cpu_before
            after = raw_verify_rate(args.seconds / 2)
            raw_wall, raw_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
            idle = HealthProbe(port)
            idle.start()
            time.sleep(2)
            idle.stop.set()
            idle.join()
            probe = HealthProbe(port)
            probe.start()
            signin_burst(port, args.seconds, args.connections, args.accounts)
            probe.stop.set()
            probe.join()
        finally:
            server.terminate()
            server.wait(timeout=10)

    per_cpu = burst["requests"] / server_cpu
    print(
        f"raw Argon2id verify (19 MiB, t=2, p=1), 1 core: {raw_wall:6.1f} /s wall  "
        f"{raw_cpu:6.1f} /CPU-s  (before {before[0]:.1f}, after {after[0]:.1f})"
    )
    print(
        f"POST /api/v1/signin over HTTP, server on 1 core: {burst['rate']:6.1f} /s wall  "
        f"{per_cpu:6.1f} /CPU-s  (p99 {burst['p99']}, {args.connections} connections, "
        f"{args.accounts} accounts, {int(burst['requests'])} sign-ins, "
        f"{int(burst['non_2xx'])} not 200)"
    )
    print(
        f"sign-ins / raw verifies, per core:              {burst['rate'] / raw_wall:6.1%} wall  "
        f"{per_cpu / raw_cpu:6.1%} CPU  (goal >= 85%)"
    )
    print(
        f"GET /healthz p99 during a sign-in burst:        {probe.percentile(0.99) * 1000:6.1f} ms"
        f"  (goal < 50 ms; p50 {probe.percentile(0.5) * 1000:.1f} ms, "
        f"{len(probe.latencies)} probes, {probe.errors} errors; "
        f"idle p99 {idle.percentile(0.99) * 1000:.1f} ms)"
    )
    load = os.getloadavg()[0]
    print(
        f"load average at the end: {load:.2f} on {os.cpu_count()} cores "
        "(other work on the machine skews every figure)"
    )


if __name__ == "__main__":
    main()
