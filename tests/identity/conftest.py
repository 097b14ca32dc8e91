"""The real upstream identity provider (tests/peers/upstream.mjs: oidc-provider from npm).

One peer process serves the whole session on a free loopback port. Its clients are the
providers the upstream tests configure; each redirects to carebridge's callback at
http://testserver, which the tests' TestClient answers in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.realparts import require

PEERS = Path(__file__).resolve().parents[1] / "peers"
# Provider names (as carebridge knows them) the peer has a client for.
PEER_PROVIDERS = ("peer", "peer-oauth", "peer-broken")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class UpstreamPeer:
    issuer: str

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @staticmethod
    def client_id(provider: str) -> str:
        return f"carebridge-{provider}"

    @staticmethod
    def client_secret(provider: str) -> str:
        return f"secret-of-{provider}-that-is-long-enough-for-tests"


def _npm_ci(npm: str) -> None:
    if (PEERS / "node_modules" / "oidc-provider").is_dir():
        return
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=PEERS,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    require("node peers", result.returncode == 0, f"npm ci failed: {result.stderr[-500:]}")


@pytest.fixture(scope="session")
def upstream_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamPeer]:
    node, npm = shutil.which("node"), shutil.which("npm")
    require("node peers", node is not None and npm is not None, "node and npm are not on PATH")
    assert node is not None and npm is not None
    _npm_ci(npm)
    port = free_port()
    clients = [
        {
            "client_id": UpstreamPeer.client_id(name),
            "client_secret": UpstreamPeer.client_secret(name),
            "redirect_uris": [f"http://testserver/signin/upstream/{name}/callback"],
            # The plain OAuth 2 clients may not ask for "openid" (Facebook has no ID tokens).
            **({"scope": "public_profile"} if name != "peer" else {}),
        }
        for name in PEER_PROVIDERS
    ]
    log_path = tmp_path_factory.mktemp("peers") / "upstream.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [node, "upstream.mjs", str(port)],
            cwd=PEERS,
            env={**os.environ, "PEER_CLIENTS": json.dumps(clients)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    peer = UpstreamPeer(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"the upstream peer exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(peer.discovery_url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the upstream peer did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        yield peer
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
