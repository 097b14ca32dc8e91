"""A real SMTP server for the tests: aiosmtpd, in a thread of the test process, on a free
loopback port, recording every e-mail it accepts (the envelope and the parsed message).

Variants, by the arguments of :func:`start` (fixtures in tests/conftest.py):

- ``tls``: "plain" (smtp:// on loopback), "starttls" (smtp://, STARTTLS required) or
  "smtps" (implicit TLS), with a certificate made here with ``cryptography``, signed by
  a CA of its own whose certificate is :attr:`SmtpServer.ca_file` (CAREBRIDGE_SMTP_CA_FILE);
  ``untrusted=True`` signs it with another CA, one the client is not told about;
- ``rcpt_reply`` / ``data_reply``: what it answers to RCPT TO / DATA instead of 250 (a
  refused recipient "550 …", a transient "421 …" / "451 …");
- ``credentials``: the (user, password) it requires (AUTH PLAIN/LOGIN, after TLS);
- ``host``: another loopback address to listen on ("127.0.0.2" stands in for a remote
  relay: only 127.0.0.1, ::1 and localhost count as loopback for CAREBRIDGE_SMTP_URL);
- ``delay``: seconds it waits before answering RCPT TO (a slow relay; set it back to 0
  to let it recover);
- down: :meth:`SmtpServer.stop`, or :func:`start` with ``running=False`` (nothing
  listens on its port until :meth:`SmtpServer.start`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Tls = Literal["plain", "starttls", "smtps"]
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    """One e-mail the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    email: EmailMessage

    def part(self, subtype: Literal["plain", "html"]) -> str:
        body = self.email.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part"
        assert body.get_content_type() == f"text/{subtype}"
        # The wire has CRLF line ends; the parser keeps them in the content.
        return str(body.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]


@dataclass
class _Handler:
    """aiosmtpd's hooks: accept, refuse or stall as the test asks."""

    messages: list[Received]
    rcpt_reply: str | None = None
    data_reply: str | None = None
    delay: float = 0.0
    connections: int = 0
    credentials: tuple[str, str] | None = None
    logins: list[tuple[str, str]] = field(default_factory=list)

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = (data.login.decode(), data.password.decode())
        self.logins.append(login)
        # handled=False: aiosmtpd answers a failure with 535 itself.
        return AuthResult(success=login == self.credentials, handled=False)

    async def handle_EHLO(  # noqa: N802  (aiosmtpd's hook names)
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.data_reply:
            return self.data_reply
        raw = bytes(envelope.original_content or envelope.content)
        parsed = BytesParser(policy=policy.default).parsebytes(raw)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), raw, parsed))
        return "250 Message accepted for delivery"


# Certificates


@dataclass(frozen=True)
class _Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _authority(common_name: str) -> _Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Authority(key, cert)


def _server_certificate(authority: _Authority, directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by ``authority``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    authority_key = authority.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(authority_key.value),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class SmtpServer:
    """A running (or stopped) test SMTP server and what it received."""

    tls: Tls
    host: str
    port: int
    ca_file: Path | None
    handler: _Handler
    _tls_context: ssl.SSLContext | None = None
    _controller: Controller | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    def sent_to(self, address: str) -> list[Received]:
        """The e-mails received for ``address`` (compared case-insensitively), oldest first."""
        wanted = address.casefold()
        return [m for m in self.messages if wanted in (r.casefold() for r in m.rcpt_tos)]

    @property
    def url(self) -> str:
        scheme = "smtps" if self.tls == "smtps" else "smtp"
        return f"{scheme}://{self.host}:{self.port}"

    def settings(self) -> dict[str, Any]:
        """Settings values that send carebridge's e-mails here."""
        values: dict[str, Any] = {"email_backend": "smtp", "smtp_url": self.url}
        if self.ca_file is not None:
            values["smtp_ca_file"] = self.ca_file
        return values

    def start(self) -> None:
        with self._lock:
            if self._controller is not None:
                return
            kwargs: dict[str, Any] = {}
            if self.tls == "smtps":
                kwargs["ssl_context"] = self._tls_context
            elif self.tls == "starttls":
                kwargs.update(tls_context=self._tls_context, require_starttls=True)
            if self.handler.credentials is not None:
                kwargs.update(authenticator=self.handler.authenticate, auth_required=True)
            controller = Controller(self.handler, hostname=self.host, port=self.port, **kwargs)
            controller.start()
            self._controller = controller

    def stop(self) -> None:
        with self._lock:
            if self._controller is not None:
                self._controller.stop()
                self._controller = None


def start(
    directory: Path,
    *,
    tls: Tls = "plain",
    untrusted: bool = False,
    rcpt_reply: str | None = None,
    data_reply: str | None = None,
    delay: float = 0.0,
    credentials: tuple[str, str] | None = None,
    host: str = HOST,
    running: bool = True,
) -> SmtpServer:
    """A test SMTP server on a free loopback port (stop it when done)."""
    directory.mkdir(parents=True, exist_ok=True)
    context: ssl.SSLContext | None = None
    ca_file: Path | None = None
    if tls != "plain":
        trusted = _authority("carebridge test CA")
        ca_file = directory / "ca.pem"
        ca_file.write_bytes(trusted.cert.public_bytes(serialization.Encoding.PEM))
        signer = _authority("someone else's CA") if untrusted else trusted
        cert_file, key_file = _server_certificate(signer, directory)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
    handler = _Handler(
        messages=[],
        rcpt_reply=rcpt_reply,
        data_reply=data_reply,
        delay=delay,
        credentials=credentials,
    )
    server = SmtpServer(tls, host, _free_port(host), ca_file, handler, context)
    if running:
        server.start()
    return server
