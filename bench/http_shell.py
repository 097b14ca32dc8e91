"""Requests per second and latency through the whole HTTP shell (middleware, routing).

Starts `carebridge serve` on a free loopback port with a throwaway data directory and
loads it with wrk (Debian package `wrk`) for a bounded time. The load generator shares the
machine's cores with the server: read the figures as a floor. Usage:
    .venv/bin/python bench/http_shell.py [--seconds 8] [--connections 16]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str) -> None:
    for _ in range(200):
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (loopback URL we built)
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"server did not answer {url}")


def wrk(url: str, seconds: int, connections: int) -> str:
    output = subprocess.run(  # noqa: S603
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"50%\s+(\S+)", output)
    p99 = re.search(r"99%\s+(\S+)", output)
    assert rate and p50 and p99, output
    return f"{float(rate[1]):8.0f} req/s  p50 {p50[1]:>8}  p99 {p99[1]:>8}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/http_shell.py needs wrk: apt-get install wrk")
    binary = Path(sys.executable).with_name("carebridge")
    for log_level in ("WARNING", "INFO"):
        port = free_port()
        with tempfile.TemporaryDirectory() as directory:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBRIDGE_")}
            env.update(CAREBRIDGE_DATA_DIR=directory, CAREBRIDGE_LOG_LEVEL=log_level)
            server = subprocess.Popen(  # noqa: S603
                [str(binary), "serve", "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_until_up(f"http://127.0.0.1:{port}/healthz")
                for path in ("/healthz", "/readyz", "/no-such-page"):
                    figures = wrk(f"http://127.0.0.1:{port}{path}", args.seconds, args.connections)
                    access = "access log on " if log_level == "INFO" else "access log off"
                    print(f"GET {path:14} {figures}  ({access}, {args.connections} connections)")
            finally:
                server.terminate()
                server.wait(timeout=10)


if __name__ == "__main__":
    main()
