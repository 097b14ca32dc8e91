"""A relying party's back-channel logout endpoint for the tests: an HTTP server on loopback
that validates each logout token as OpenID Connect Back-Channel Logout 1.0 §2.6 asks,
with joserfc against the provider's published JWKS, and keeps what it accepted per
client (the path names the client: ``/logout/<label>``). openid-client (tests/peers)
has no back-channel logout API, hence this small receiver."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

EVENT = "http://schemas.openid.net/event/backchannel-logout"


@dataclass
class LogoutReceiver:
    issuer: str = ""
    jwks: dict[str, Any] = field(default_factory=dict)  # the provider's JWKS document
    clients: dict[str, str] = field(default_factory=dict)  # path label -> its client ID
    accepted: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # per label
    refused: list[str] = field(default_factory=list)  # why, per refused request
    answer: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, label: str) -> str:
        return f"http://127.0.0.1:{self.port}/logout/{label}"

    def validate(self, client_id: str, token: str) -> dict[str, Any]:
        """§2.6: signature by the OP's key, iss, aud, iat, exp, the events member, sub
        or sid, no nonce; and the ``logout+jwt`` type (§2.4)."""
        decoded = jwt.decode(token, KeySet.import_key_set(self.jwks))  # type: ignore[arg-type]
        if decoded.header.get("typ") != "logout+jwt":
            raise ValueError("typ")
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": client_id},
            iat={"essential": True},
            exp={"essential": True},
            jti={"essential": True},
        ).validate(decoded.claims)
        claims = decoded.claims
        if not isinstance(claims.get("events"), dict) or claims["events"].get(EVENT) != {}:
            raise ValueError("events")
        if "nonce" in claims:
            raise ValueError("nonce")
        if not claims.get("sub") and not claims.get("sid"):
            raise ValueError("sub")
        return claims

    def handle(self, path: str, content_type: str, body: bytes) -> int:
        label = path.removeprefix("/logout/")
        client_id = self.clients.get(label, "")
        form = parse_qs(body.decode())
        tokens = form.get("logout_token", [])
        try:
            if content_type != "application/x-www-form-urlencoded" or len(tokens) != 1:
                raise ValueError("form")
            claims = self.validate(client_id, tokens[0])
        except (JoseError, ValueError) as exc:
            with self.lock:
                self.refused.append(f"{label}: {exc!r}")
            return 400
        with self.lock:
            self.accepted.setdefault(label, []).append(claims)
        return self.answer


def serve(receiver: LogoutReceiver) -> Iterator[LogoutReceiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            status = receiver.handle(self.path, self.headers.get("content-type", ""), body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.send_header("cache-control", "no-store")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
