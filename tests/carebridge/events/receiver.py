"""A real webhook receiver for the tests: an HTTP server on loopback that verifies every
request with the ``standardwebhooks`` library, as an app's receiver would, and keeps
each event once (idempotent by ``webhook-id``). It can be told to fail for a while:
answer 500, hang past the sender's timeout, redirect, or accept and then drip an
endless body."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    secret: str = ""
    # What the next requests get, one per request, before normal answers resume:
    # "500", "hang" (longer than the sender waits), "redirect:<url>", "drip" (200, then a
    # body of a byte every tenth of a second, within any read timeout, for 6 seconds:
    # a sender reading it would wait that long, then fail on the short body).
    failures: list[str] = field(default_factory=list)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # webhook-id -> payload
    raw: list[Delivery] = field(default_factory=list)
    refused: int = 0
    requests: int = 0
    hang_seconds: float = 3.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        with self.lock:
            self.requests += 1
            failure = self.failures.pop(0) if self.failures else None
            self.raw.append(Delivery(headers, body))
        if failure == "500":
            return 500, {}
        if failure == "hang":
            time.sleep(self.hang_seconds)
            return 200, {}
        if failure == "drip":
            return 200, {"x-drip": "1"}
        if failure is not None and failure.startswith("redirect:"):
            return 302, {"Location": failure.removeprefix("redirect:")}
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            with self.lock:
                self.refused += 1
            return 400, {}
        with self.lock:
            self.events.setdefault(headers["webhook-id"], payload)
        return 204, {}


def serve(receiver: Receiver, tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """Serve on loopback; with ``tls``, over TLS and HTTP/1.1 (connections kept open
    unless the sender asks otherwise, as a real receiver's)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if tls is not None else "HTTP/1.0"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, extra = receiver.handle(headers, body)
            drip = extra.pop("x-drip", None) is not None
            try:
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(10**12) if drip else "0")
                self.end_headers()
                for _ in range(60 if drip else 0):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass  # the sender gave up waiting (or stopped reading)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    receiver.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def types_of(receiver: Receiver) -> list[str]:
    return sorted(str(payload["type"]) for payload in receiver.events.values())


def dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload)
