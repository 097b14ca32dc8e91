"""Authlib's authorization server on Starlette: the glue, written once, shaped like
Authlib's own Flask integration (``authlib.integrations.flask_oauth2``): a payload and a
request adapter, Authlib's answers turned into Starlette responses, and the
``AuthorizationServer`` subclass with ``create_oauth2_request``, ``handle_response`` and
``send_signal``.

Unlike Flask's, the request is built from a body we parsed ourselves (never
``request.form()``, ten times slower), and the synchronous server runs either on the
event loop or in a worker thread in one transaction: how, the caller says with an
:class:`identity.oidc.execution.Execution`, handed to Authlib's callbacks as the
server's ``execution`` (:meth:`AuthorizationServer.running`). What the provider serves
(its grants, clients and tokens) is in :mod:`identity.oidc.server`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar
from urllib.parse import parse_qsl

from authlib.oauth2 import AuthorizationServer as _AuthorizationServer
from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc6749.requests import JsonRequest, OAuth2Payload
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from carebridge.http import boundary
from carebridge.http.body import read_bounded
from carebridge.http.forms import MAX_BODY
from carebridge.http.problems import REFUSED_INPUT
from identity.oidc.execution import Execution, InTransaction, NoDatabase

T = TypeVar("T")

# Longest parameter accepted anywhere (a client assertion is the longest legitimate one).
MAX_PARAMETER = 4096
MAX_NONCE = 255
MAX_STATE = 1024


# Requests


class StarletteOAuth2Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._datalist[key].append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class StarletteOAuth2Request(OAuth2Request):  # type: ignore[misc]
    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers,
        query: list[tuple[str, str]],
        form: list[tuple[str, str]],
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self._args = dict(query)
        self._form = dict(form)
        self.payload = StarletteOAuth2Payload([*query, *form])

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class ParameterError(ValueError):
    """A parameter over the limits or not text (carebridge.http.boundary): answered
    invalid_request before Authlib sees it."""


class RefusedParameterError(ParameterError):
    """A parameter or a credential that is not text: the boundary's refusal (the access
    log says where, never what)."""

    def __init__(self) -> None:
        super().__init__(REFUSED_INPUT)


def _check_parameters(pairs: list[tuple[str, str]]) -> None:
    """The protocol's limits. That the parameters are text their readers checked: the
    boundary middleware the query, :func:`read_oauth_form` and ``read_form`` the bodies."""
    for key, value in pairs:
        if len(key) > 100 or len(value) > MAX_PARAMETER:
            raise ParameterError("A request parameter is too long.")
        if key == "nonce" and len(value) > MAX_NONCE:
            raise ParameterError("The nonce is too long.")
        if key == "state" and len(value) > MAX_STATE:
            raise ParameterError("The state is too long.")


def _check_basic_credentials(headers: Headers) -> None:
    """HTTP Basic client credentials, decoded as Authlib decodes them (base64, UTF-8, then
    form-urlencoded: RFC 6749 §2.3.1), must be text too: a ``%00`` in a client_id would
    otherwise reach the client lookup. Checked only where clients authenticate (token,
    revocation, introspection): elsewhere (/authorize) nothing decodes them, and a browser
    behind a Basic-auth proxy may send credentials in any encoding."""
    try:
        client_id, secret = extract_basic_authorization(headers)
    except UnicodeDecodeError:
        raise ParameterError("The Authorization header is not valid.") from None
    if not boundary.is_text(f"{client_id or ''}{secret or ''}"):
        raise RefusedParameterError
    if len(client_id or "") > MAX_PARAMETER or len(secret or "") > MAX_PARAMETER:
        raise ParameterError("A client credential is too long.")


async def read_oauth_form(request: Request) -> list[tuple[str, str]]:
    """The urlencoded body of a client-authenticated endpoint, parsed from the bytes.

    Raises ParameterError for a wrong content type, a body over the limit, a malformed
    body or an oversized parameter.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise ParameterError("Send the body as application/x-www-form-urlencoded.")
    body = await read_bounded(request, MAX_BODY, ParameterError("The request body is too large."))
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=False, strict_parsing=False)
    except UnicodeDecodeError:
        raise ParameterError("The request body is not UTF-8.") from None
    # The input boundary: every name and value text (one look at them all).
    if not boundary.is_text("".join(part for pair in pairs for part in pair)):
        boundary.mark_refused(request.scope, "parameter")
        raise RefusedParameterError
    _check_parameters(pairs)
    names = [key for key, _ in pairs]
    if len(set(names)) != len(names):
        # RFC 6749 §3.2: request parameters must not be included more than once.
        raise ParameterError("A parameter is repeated.")
    return pairs


# Responses


@dataclass
class Answer:
    """What Authlib answered, until it becomes a Starlette response (outside the thread)."""

    status: int
    body: Any
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def location(self) -> str | None:
        return next((v for k, v in self.headers if k.lower() == "location"), None)

    @location.setter
    def location(self, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != "location"]
        self.headers.append(("Location", value))

    def response(self) -> Response:
        if isinstance(self.body, dict):
            content = json.dumps(self.body, separators=(",", ":")).encode()
        else:
            content = (self.body or "").encode()
        headers = dict(self.headers)
        return Response(content, status_code=self.status, headers=headers)


_NO_STORE = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
]


def invalid_request(description: str) -> Response:
    body = {"error": "invalid_request", "error_description": description}
    return Answer(400, body, _NO_STORE).response()


# The server


class AuthorizationServer(_AuthorizationServer):  # type: ignore[misc]
    """Starlette implementation of Authlib's ``AuthorizationServer``.

    One per app. Authlib asks some questions without the request (``query_client``), so a
    request runs on a copy of it that knows how the request runs: :meth:`running`.
    """

    def __init__(self, engine: Engine, issuer: str, *, threads: int) -> None:
        super().__init__(scopes_supported=None)
        self.engine = engine
        self.issuer = issuer
        self.execution: Execution = NoDatabase()
        # Token work holds a pooled connection; more threads than connections only queue.
        # Its own threads: a plain executor hop costs half of anyio's (limiter, run vars).
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="oidc-token")

    def running(self, execution: Execution) -> Self:
        """This server, for one request that runs as ``execution``: what Authlib's callbacks
        (grants, client authentication, endpoints) read as ``server.execution``. A shallow
        copy (as ``copy.copy`` makes, in a fifth of its time: one per token request): the
        registrations and the client cache are shared."""
        bound = object.__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound.execution = execution
        return bound

    # Authlib's integration points

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        raise TypeError("build the OAuth2Request with oauth2_request() first")

    def create_json_request(self, request: Any) -> JsonRequest:
        raise NotImplementedError("no JSON-bodied endpoint here")

    def handle_response(self, status: int, body: Any, headers: Any) -> Answer:
        return Answer(status, body, list(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Authlib signals every token and revocation request; nothing listens."""

    # Requests in, and how they run

    def oauth2_request(
        self,
        request: Request,
        path: str,
        form: list[tuple[str, str]] | None = None,
        *,
        with_query: bool = True,
        authenticates_client: bool = False,
    ) -> StarletteOAuth2Request:
        """The request as Authlib reads it, its parameters checked (ParameterError);
        ``authenticates_client`` where a client may present Basic credentials."""
        query = list(request.query_params.multi_items()) if with_query else []
        _check_parameters(query)
        # The consent form echoes the checked query, but is itself a request: check again.
        _check_parameters(form or [])
        if authenticates_client:
            try:
                _check_basic_credentials(request.headers)
            except RefusedParameterError:
                boundary.mark_refused(request.scope, "parameter")
                raise
        # URLs come from the configured issuer, never from the Host header.
        oauth = StarletteOAuth2Request(
            request.method, f"{self.issuer}{path}", request.headers, query, form or []
        )
        oauth.request_id = getattr(request.state, "request_id", None)
        return oauth

    async def run(self, work: Callable[[Self], T]) -> T:
        """Run synchronous Authlib work in a worker thread, in one transaction: ``work``
        gets this server :meth:`running` in it.

        If the awaiting request is cancelled, the work still runs to its commit (as a
        request whose client went away): it is never interrupted halfway.
        """

        def in_transaction() -> T:
            with self.in_transaction() as execution:
                return work(self.running(execution))

        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # request ID and the like, as anyio would
        return await loop.run_in_executor(self.executor, context.run, in_transaction)

    @contextmanager
    def transaction(self) -> Iterator[tuple[Self, Session]]:
        """A request's transaction, for work outside Authlib's token endpoint (the
        authorization endpoint, userinfo): this server running in it, and its Session."""
        with self.in_transaction() as execution:
            yield self.running(execution), execution.session()

    @contextmanager
    def in_transaction(self) -> Iterator[InTransaction]:
        """One transaction (:class:`identity.oidc.execution.InTransaction`): committed if
        the block ends normally, else rolled back."""
        with self.engine.connect() as connection:
            execution = InTransaction(connection)
            try:
                with connection.begin():
                    yield execution
                    execution.finish()
            finally:
                execution.close()
