"""Where a webhook may be sent: the resolved address, checked at every connection.

A name is resolved once per delivery; every address it resolves to must be public, or
the delivery is refused; the connection then goes to the checked address itself, with
the name as Host and TLS server name (:class:`Pinned`), so no second resolution can
swap in another address (DNS rebinding). Refused: private, loopback, link-local (the
cloud metadata service, 169.254.169.254, among them), CGNAT, multicast, reserved and
unspecified addresses, IPv6 unique-local (fd00:ec2::254) and site-local included, all of
the reserved ``::/8`` (IPv4-compatible ``::10.0.0.1``, SIIT, local-use NAT64), and IPv4
inside IPv6 (mapped, 6to4, Teredo, NAT64's well-known prefix ``64:ff9b::/96``) judged as
the IPv4 address it carries. Loopback is allowed only
with ``CAREBRIDGE_WEBHOOK_ALLOW_LOOPBACK`` (tests and development; refused in production).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> every address the name resolves to (injectable: the tests' resolvers).
Resolver = Callable[[str, int], Sequence[str]]


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix


class RefusedAddressError(Exception):
    """The URL's host is not, or does not only resolve to, public addresses."""


def resolve(host: str, port: int) -> list[str]:
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError("name not resolved") from exc
    return [str(answer[4][0]) for answer in answers]


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        # On an IPv6-only network with DNS64 every IPv4 host answers in this prefix, so
        # it is judged as the IPv4 address in its low 32 bits, not refused outright.
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_allowed(address: IPAddress, *, allow_loopback: bool) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_allowed(embedded, allow_loopback=allow_loopback)
    if address.is_loopback:
        return allow_loopback
    # is_global excludes private, link-local, CGNAT (100.64/10), unspecified,
    # documentation and unique-local ranges. Before Python 3.13 it holds for the reserved
    # ::/8 (IPv4-compatible, SIIT ::ffff:0:0:0/96, local-use NAT64 64:ff9b:1::/48, which
    # translators route to IPv4 inside) and the deprecated site-local fec0::/10: both
    # refused here; multicast is listed apart.
    if address.is_reserved or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return False
    return address.is_global


@dataclass(frozen=True)
class Pinned:
    """A request target bound to one checked address."""

    url: str  # the URL with the checked address in place of the name
    host: str  # the Host header: the name (and port) the app registered
    extensions: dict[str, str] = field(default_factory=dict)  # the TLS server name


def pin(url: str, resolver: Resolver, *, allow_loopback: bool) -> Pinned:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    try:
        answers = (
            [literal]
            if literal is not None
            else [ipaddress.ip_address(answer.split("%", 1)[0]) for answer in resolver(host, port)]
        )
    except (OSError, ValueError) as exc:
        raise OSError("name not resolved") from exc
    if not answers:
        raise OSError("name not resolved")
    if not all(is_allowed(answer, allow_loopback=allow_loopback) for answer in answers):
        raise RefusedAddressError(host)
    chosen = answers[0]
    shown = f"[{chosen}]" if chosen.version == 6 else str(chosen)
    netloc = f"{shown}:{port}"
    host_header = parts.netloc.rsplit("@", 1)[-1]
    extensions = {"sni_hostname": host} if parts.scheme == "https" and literal is None else {}
    return Pinned(
        url=urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
        host=host_header,
        extensions=extensions,
    )
