"""carebridge's authorization server: Authlib's, on Starlette
(:mod:`identity.oidc.starlette_oauth2`), with the grants it serves
(:mod:`identity.oidc.grants`, :mod:`identity.oidc.pkce`), how clients authenticate
(:mod:`identity.oidc.client_assertions`), revocation and introspection
(:mod:`identity.oidc.revocation`, :mod:`identity.oidc.introspection`), and the tokens it
mints (:mod:`identity.oidc.tokens`). The token endpoint's fast path is
:mod:`identity.oidc.token_fast_path`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, ClassVar

from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidScopeError
from authlib.oauth2.rfc6749.authenticate_client import ClientAuthentication
from authlib.oauth2.rfc6749.endpoint import Endpoint
from authlib.oauth2.rfc9207 import IssuerParameter
from cachetools import TTLCache
from starlette.requests import Request

from carebridge.runtime import Runtime
from identity.oidc import clients, tokens
from identity.oidc import scopes as scope_rules
from identity.oidc.client_assertions import PrivateKeyJwt
from identity.oidc.clients import Client
from identity.oidc.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    OpenIDCode,
    RefreshTokenGrant,
)
from identity.oidc.introspection import Introspection
from identity.oidc.pkce import S256CodeChallenge
from identity.oidc.revocation import Revocation
from identity.oidc.starlette_oauth2 import Answer, StarletteOAuth2Request
from identity.oidc.starlette_oauth2 import AuthorizationServer as StarletteAuthorizationServer
from identity.oidc.tokens import EndUser

# Answer and StarletteOAuth2Request are importable from here, as before they moved.
__all__ = ["Answer", "AuthorizationServer", "StarletteOAuth2Request", "server_for"]


def _monotonic() -> float:
    # Looked up at each call, not bound once: the clock is this module's time.
    return time.monotonic()


# Threads for token work on PostgreSQL. More only contend for the GIL: on two cores, 4
# served ~20% more refresh and code grants per CPU-second than 8 (bench/token_endpoint.py).
TOKEN_THREADS = 4


class Issuer(IssuerParameter):  # type: ignore[misc]
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


class AuthorizationServer(StarletteAuthorizationServer):
    # Endpoints made for each request, on the server running it (``running``): Authlib's
    # own registration would keep the first server for good.
    ENDPOINTS: ClassVar[dict[str, type[Endpoint]]] = {
        Revocation.ENDPOINT_NAME: Revocation,
        Introspection.ENDPOINT_NAME: Introspection,
    }

    def __init__(self, runtime: Runtime) -> None:
        # On SQLite, whose writers take turns, one thread at a time avoids busy-waiting.
        threads = 1 if runtime.settings.uses_sqlite else TOKEN_THREADS
        super().__init__(runtime.engine, runtime.settings.issuer, threads=threads)
        self.runtime = runtime
        # Authlib logs every issued token (access and refresh) at DEBUG: never let it.
        authlib_log = logging.getLogger("authlib")
        authlib_log.setLevel(max(authlib_log.getEffectiveLevel(), logging.INFO))
        self.register_token_generator("default", self._generate_token)
        self.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(), OpenIDCode(runtime)])
        self.register_grant(RefreshTokenGrant)
        self.register_grant(ClientCredentialsGrant)
        # Clients by ID, for client_cache_seconds; asked on the event loop and in the
        # token threads: one lock.
        self._clients: TTLCache[str, Client | None] = TTLCache(
            10_000, runtime.settings.client_cache_seconds, timer=_monotonic
        )
        self._clients_lock = threading.Lock()
        self.issuer_parameter = Issuer(self.issuer)
        self.register_extension(self.issuer_parameter)

    # Authlib's integration points

    def query_client(self, client_id: str) -> Client | None:
        """A client by ID, from a short-lived cache (``client_cache_seconds``): every token
        request asks, and a registration changes rarely."""
        with self._clients_lock:
            try:
                return self._clients[client_id]  # None too: an unknown client, remembered
            except KeyError:
                pass
        found = clients.find(self.execution.session(), client_id)
        if self.runtime.settings.client_cache_seconds and len(client_id) <= 100:
            with self._clients_lock:
                self._clients[client_id] = found
        return found

    def authenticate_client(self, request: Any, methods: list[str], endpoint: str = "token") -> Any:
        """Authlib's client authentication, with this server's ``query_client`` and a
        private_key_jwt check that records its ``jti`` in this request's execution."""
        execution = self.execution

        def private_key_jwt(query_client: Any, request: Any) -> Any:
            # Made only when a client presents an assertion.
            return PrivateKeyJwt(self.runtime, execution)(query_client, request)

        authentication = ClientAuthentication(self.query_client)
        authentication.register(PrivateKeyJwt.CLIENT_AUTH_METHOD, private_key_jwt)
        return authentication(request, methods, endpoint)

    def create_endpoint_response(self, name: str, request: Any = None) -> Answer:
        endpoint = self.ENDPOINTS[name](server=self)
        request = endpoint.create_endpoint_request(request)
        try:
            status, body, headers = endpoint(request)
        except OAuth2Error as error:
            answer: Answer = self.handle_error_response(request, error)
            return answer
        return self.handle_response(status, body, headers)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Client credentials store nothing (the access token is a JWT); the code and
        refresh grants store their refresh token as they redeem what they were given
        (grants: ``save_token``, with ``successor``)."""
        if token.get("refresh_token"):
            raise RuntimeError("a refresh token is stored by the grant that redeems")

    def validate_requested_scope(self, scope: str | None) -> None:
        for item in scope_rules.split(scope):
            if not scope_rules.is_known(item):
                raise InvalidScopeError()

    def _generate_token(
        self,
        grant_type: str,
        client: Client,
        *,
        user: EndUser | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        scope = scope or ""
        access, lifetime = tokens.mint_access_token(self.runtime, client, scope=scope, user=user)
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": lifetime,
            "scope": scope,
        }
        granted = scope.split()
        if user is not None:
            if include_refresh_token and scope_rules.OFFLINE_ACCESS in granted:
                token["refresh_token"] = tokens.new_token()
            if scope_rules.LAUNCH_PATIENT in granted and user.patient is not None:
                token["patient"] = user.patient
        return token


def server_for(request: Request) -> AuthorizationServer:
    """The app's one server (built on first use from its runtime)."""
    state = request.app.state
    server: AuthorizationServer | None = getattr(state, "oidc_server", None)
    if server is None:
        server = AuthorizationServer(request.app.state.runtime)
        state.oidc_server = server
    return server
