"""The cookies carebridge reads, named in one place.

Each module that sets or reads one of these takes its name from here, and the input
boundary (carebridge.http.boundary) looks at these and no others: a cookie another site
on the parent domain set is never read, so whatever it holds cannot matter.

Served over https, a cookie's name carries its prefix: ``__Host-`` (Secure, no Domain,
Path=/: another subdomain cannot set it) where the cookie's path is /, ``__Secure-``
where it is narrower (a prefix only browsers' Secure rule backs).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cookie:
    base: str
    https_prefix: str = ""

    def name(self, https: bool) -> str:
        return f"{self.https_prefix}{self.base}" if https else self.base


SESSION = Cookie("carebridge_session", "__Host-")  # identity.sessions
CSRF = Cookie("carebridge_csrf", "__Host-")  # carebridge.http.csrf
# identity.email_verification: the browser waiting for an e-mail code (sign-up, or a
# sign-in whose address is not verified yet). Grants nothing but typing that code.
EMAIL_PENDING = Cookie("carebridge_email_pending", "__Host-")
SMS_LINK_VISIT = Cookie("carebridge_link", "__Secure-")  # sms.links, Path=/l
DEMO_PROVIDER = Cookie("demo_provider_session")  # carebridge.demo.provider_app
PASSWORD_RESET = Cookie(
    "carebridge_reset", "__Secure-"
)  # identity.flows.reset, Path=/password/reset

READ = (SESSION, CSRF, EMAIL_PENDING, SMS_LINK_VISIT, DEMO_PROVIDER, PASSWORD_RESET)


def names_read(https: bool) -> frozenset[str]:
    """The names of every cookie the app reads, as a server at ``https`` names them."""
    return frozenset(cookie.name(https) for cookie in READ)
