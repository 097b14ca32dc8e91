"""Whole requests through two route trees, side by side: the app's ``RouteGroup`` tree
(carebridge.http.routing: a dictionary lookup per path segment) against Starlette's own
``Mount`` per literal path prefix, built here from the same routes.

Two `carebridge serve`-like servers (the same app, the same middleware; only the route
tree differs) run on loopback ports, each on its own throwaway SQLite data directory;
wrk loads them in turn, alternating, for ``--rounds`` rounds per path, so drift on the
shared 2-core machine hits both alike. Prints each round and the medians.
``--in-process`` calls the two apps directly instead (every middleware, the router, the
handler; no HTTP) and measures CPU time per request, which a loaded machine disturbs far
less than throughput. Usage:
    .venv/bin/python bench/route_tree.py [--seconds 4] [--rounds 5] [--connections 16]
    .venv/bin/python bench/route_tree.py --in-process [--rounds 11] [--requests 1000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_shell import free_port, wait_until_up

# Deep in the list (the messaging API, 401 without a token), a page, the first route, and
# a path no route matches.
PATHS = ("/api/v1/messaging/threads/t1", "/messages/t1", "/healthz", "/no-such-page")


def mount_tree(routes: Iterable[Any]) -> list[Any]:
    """The app's full-path routes under Starlette's own ``Mount`` per literal prefix
    (four routes or more), recursively; a prefix's own route stays beside its mount."""
    from starlette.routing import Mount, Route  # noqa: PLC0415

    def segment(path: str, depth: int) -> str | None:
        parts = path.split("/")
        if len(parts) <= depth or any("{" in part for part in parts[1 : depth + 1]):
            return None
        return "/".join(parts[: depth + 1])

    def under(route: Any, prefix: str) -> Any:
        if isinstance(route, Mount):
            return Mount(route.path.removeprefix(prefix), app=route.app, name=route.name)
        return Route(
            route.path.removeprefix(prefix),
            route.endpoint,
            methods=sorted(route.methods) if route.methods else None,
            name=route.name,
            include_in_schema=route.include_in_schema,
        )

    def grouped(routes: list[Any], depth: int = 1, parent: str = "") -> list[Any]:
        keys: list[str | None] = []
        for route in routes:
            if not isinstance(route, Route | Mount):
                return routes
            if route.path == parent:
                keys.append(None)
                continue
            key = segment(route.path, depth)
            if key is None:
                return routes
            keys.append(key)
        members: dict[str, list[Any]] = {}
        order: list[Any] = []
        for route, key in zip(routes, keys, strict=True):
            if key is None:
                order.append(route)
            else:
                if key not in members:
                    members[key] = []
                    order.append(key)
                members[key].append(route)
        result: list[Any] = []
        for entry in order:
            if not isinstance(entry, str):
                result.append(entry)
                continue
            if len(members[entry]) < 4:
                result.extend(members[entry])
                continue
            inner = grouped(members[entry], depth + 1, entry)
            own = [r for r in inner if isinstance(r, Route) and r.path == entry]
            result.extend(own)
            result.append(Mount(entry, routes=[under(r, entry) for r in inner if r not in own]))
        return result

    return grouped(list(routes))


def serve(kind: str, port: int) -> None:
    import uvicorn  # noqa: PLC0415

    from carebridge.app import create_app_from_env  # noqa: PLC0415
    from carebridge.cli.serve import prepare  # noqa: PLC0415
    from carebridge.http import routing  # noqa: PLC0415
    from carebridge.runtime import Runtime  # noqa: PLC0415
    from carebridge.settings import load_settings  # noqa: PLC0415

    prepare(Runtime.build(load_settings()))
    app = create_app_from_env()
    if kind == "mounts":
        app.router.routes[:] = mount_tree(routing.flatten(app.router.routes))
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


def in_process(rounds: int, requests: int) -> None:
    """CPU time per whole request (every middleware, the router, the handler), the ASGI
    app called directly: process time, so other processes on the machine count less."""
    import asyncio  # noqa: PLC0415
    import time  # noqa: PLC0415

    from carebridge.app import create_app  # noqa: PLC0415
    from carebridge.cli.serve import prepare  # noqa: PLC0415
    from carebridge.http import routing  # noqa: PLC0415
    from carebridge.runtime import Runtime  # noqa: PLC0415
    from carebridge.settings import Settings  # noqa: PLC0415

    apps = {}
    for kind in ("groups", "mounts"):
        directory = Path(tempfile.mkdtemp())
        runtime = Runtime.build(Settings(data_dir=directory, log_level="WARNING"))
        prepare(runtime)
        app = create_app(runtime)
        if kind == "mounts":
            app.router.routes[:] = mount_tree(routing.flatten(app.router.routes))
        apps[kind] = app

    async def one(app: Any, path: str) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:8000"), (b"accept", b"application/json")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            pass

        await app(scope, receive, send)

    async def run() -> None:
        for path in PATHS:
            cost: dict[str, list[float]] = {kind: [] for kind in apps}
            for app in apps.values():  # warm up
                for _ in range(requests // 4):
                    await one(app, path)
            for round_ in range(rounds):
                for kind in sorted(apps, reverse=round_ % 2 == 1):
                    start = time.process_time()
                    for _ in range(requests):
                        await one(apps[kind], path)
                    cost[kind].append((time.process_time() - start) / requests * 1e6)
            groups, mounts = (statistics.median(cost[k]) for k in ("groups", "mounts"))
            print(
                f"GET {path:30} groups {groups:6.1f} µs  mounts {mounts:6.1f} µs  "
                f"mounts/groups {mounts / groups:.3f}  (CPU per whole request, median of "
                f"{rounds} alternating rounds of {requests})"
            )

    asyncio.run(run())


def wrk(url: str, seconds: int, connections: int) -> float:
    output = subprocess.run(  # noqa: S603
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    assert rate, output
    return float(rate[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--serve", choices=("groups", "mounts"))
    parser.add_argument("--port", type=int)
    parser.add_argument(
        "--in-process", action="store_true", help="CPU per request, the app called directly"
    )
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    if args.in_process:
        in_process(args.rounds, args.requests)
        return
    if shutil.which("wrk") is None:
        sys.exit("bench/route_tree.py needs wrk: apt-get install wrk")
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    directories = [tempfile.TemporaryDirectory() for _ in range(2)]
    try:
        for kind, directory in zip(("groups", "mounts"), directories, strict=True):
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBRIDGE_")}
            env.update(CAREBRIDGE_DATA_DIR=directory.name, CAREBRIDGE_LOG_LEVEL="WARNING")
            command = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
            servers[kind] = (
                port,
                subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL),  # noqa: S603
            )
        for port, _ in servers.values():
            wait_until_up(f"http://127.0.0.1:{port}/healthz")
        for path in PATHS:
            rates: dict[str, list[float]] = {kind: [] for kind in servers}
            for round_ in range(args.rounds):
                # Alternate which goes first, so neither always follows the other.
                for kind in sorted(servers, reverse=round_ % 2 == 1):
                    url = f"http://127.0.0.1:{servers[kind][0]}{path}"
                    rates[kind].append(wrk(url, args.seconds, args.connections))
            groups, mounts = (statistics.median(rates[k]) for k in ("groups", "mounts"))
            print(
                f"GET {path:30} groups {groups:7.0f} req/s  mounts {mounts:7.0f} req/s  "
                f"mounts/groups {mounts / groups:.3f}  "
                f"(rounds: {[round(r) for r in rates['groups']]} / "
                f"{[round(r) for r in rates['mounts']]})"
            )
    finally:
        for _, server in servers.values():
            server.terminate()
            server.wait(timeout=10)
        for directory in directories:
            directory.cleanup()


if __name__ == "__main__":
    main()
