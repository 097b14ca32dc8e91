"""The input boundary: no control character and no lone surrogate gets past it.

Text a request carries (its path, query parameters, form fields, JSON strings, the OAuth
endpoints' parameters and Basic credentials, the app's own cookies) must be text a person
could type. C0 controls (U+0000 to U+001F), DEL, C1 controls (U+0080 to U+009F) and lone
surrogates (U+D800 to U+DFFF) are refused with a 400 before a handler uses them: a NUL
cannot be stored in PostgreSQL text and a lone surrogate cannot be encoded as UTF-8, so
either reached the driver as a 500 with the statement in the log, and no field needs
them. Tab, line feed and carriage return are allowed only in fields declared multiline
(:data:`MULTILINE`: a message's subject and body). File contents are bytes and pass
unchecked; a file's name is text.

Headers are bytes, not text: a header value may hold any byte but the controls (0x00 to
0x08, 0x0A to 0x1F, 0x7F; tab is allowed, RFC 9110 §5.5). Bytes 0x80 to 0x9F there are
UTF-8 continuation bytes (a right quote, U+2019, is E2 80 99), not C1 controls. A header
whose value the app decodes holds to the text rule where it is decoded: the Basic
credentials, where clients authenticate (``identity.oidc.starlette_oauth2``).

Cookies: only those the app reads (:mod:`carebridge.http.cookies`) are looked at, and
one that is not text is treated as absent, never answered 400: anyone who can set a
cookie on the parent domain could otherwise lock a person out of every page, and a
corrupted session cookie means the person is simply not signed in.

Two kinds of places apply it, and nothing else needs to:

- :class:`InputBoundaryMiddleware`, for every request before routing and before
  anything reads a cookie: the path, the query string, every header's bytes, and the
  app's cookies as Starlette parses them;
- the body readers: :mod:`carebridge.http.forms` (forms, JSON) and the OAuth glue
  (``identity.oidc.starlette_oauth2``: the token, revocation and introspection bodies and the
  Basic credentials, decoded as Authlib decodes them), through :func:`check_pairs`,
  :func:`check_form` and :func:`check_json`.

How a refusal is answered (a problem, a page, an OAuth error) is
:func:`carebridge.http.problems.refused_input`'s to decide. Nothing about the refused
value is logged: the access log names the request's route and where the input was
refused, never its path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from typing import Annotated, Any, get_args
from urllib.parse import parse_qsl

from pydantic import BaseModel
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request, cookie_parser
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from carebridge.http.problems import REFUSED_INPUT, Problem

# What no text field holds, and what a multiline one may hold of it (tab, LF, CR).
_NOT_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NOT_MULTILINE_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# The same for ASCII text, as the bytes it may hold: deleting them leaves nothing. A
# few times faster than the patterns (a 20,000-character message body: 20 µs, not 80).
_ASCII_TEXT = bytes(range(0x20, 0x7F))
_ASCII_MULTILINE_TEXT = b"\t\n\r" + _ASCII_TEXT


class Multiline:
    """Marks a text field that may hold tab, line feed and carriage return."""

    def __repr__(self) -> str:
        return "MULTILINE"


MULTILINE = Multiline()
# A pydantic field that may span lines: ``body: MultilineText = Field(...)``.
MultilineText = Annotated[str, MULTILINE]


class InputRefused(Problem):
    """A 400 for input the boundary refuses; the value is never repeated."""

    def __init__(self) -> None:
        super().__init__(400, REFUSED_INPUT)


def is_text(value: str, *, multiline: bool = False) -> bool:
    """Whether ``value`` holds no character the boundary refuses."""
    if value.isascii():
        allowed = _ASCII_MULTILINE_TEXT if multiline else _ASCII_TEXT
        return not value.encode("ascii").translate(None, allowed)
    pattern = _NOT_MULTILINE_TEXT if multiline else _NOT_TEXT
    return pattern.search(value) is None


def check_pairs(pairs: Iterable[tuple[str, str]], multiline: Collection[str] = ()) -> None:
    """Refuse (:class:`InputRefused`) a parameter whose name or value is not text."""
    for name, value in pairs:
        if not is_text(name) or not is_text(value, multiline=name in multiline):
            raise InputRefused


def check_form(form: FormData, multiline: Collection[str] = ()) -> None:
    """Refuse a form field whose name or value is not text; a file's name is text, its
    contents are not looked at."""
    for name, value in form.multi_items():
        text = value.filename or "" if isinstance(value, UploadFile) else value
        if not is_text(name) or not is_text(text, multiline=name in multiline):
            raise InputRefused


def check_json(value: Any, multiline: Collection[str] = ()) -> None:
    """Refuse a parsed JSON body holding a key or a string that is not text, at any depth;
    strings under a key in ``multiline`` may hold tab, line feed and carriage return.
    Checked before validation, so a validator that would tidy a value away (collapsing
    whitespace, say) does not decide what the boundary lets through."""
    if isinstance(value, str):
        if not is_text(value):
            raise InputRefused
    elif isinstance(value, dict):
        for key, item in value.items():
            if not is_text(key):
                raise InputRefused
            if isinstance(item, str) and key in multiline:
                if not is_text(item, multiline=True):
                    raise InputRefused
            else:
                check_json(item, multiline)
    elif isinstance(value, list):
        for item in value:
            check_json(item, multiline)


@functools.cache
def multiline_fields(model: type[BaseModel]) -> frozenset[str]:
    """The JSON keys of ``model``'s fields typed :data:`MultilineText`, nested models'
    included (by name: a body's keys do not say which model they belong to)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        if MULTILINE in field.metadata:
            names.add(field.alias or name)
        for inner in _models_in(field.annotation):
            names |= multiline_fields(inner)
    return frozenset(names)


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in get_args(annotation):
        yield from _models_in(argument)


# Before routing: path, query string, headers, cookies

# A query string without "%" and with printable ASCII only decodes to printable text:
# nothing to parse. Header names and values are bytes: deleting the bytes a header may
# hold from all of them, joined by a tab, must leave nothing. A cookie header (past
# that check) needs a look only if a value in it may not be printable ASCII: a tab, a
# byte past ASCII, or a backslash (a quoted value's escape: "\\000" decodes to a NUL).
_QUERY_NEEDS_A_LOOK = re.compile(rb"[^\x20-\x7e]|%")
_HEADER_BYTES = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))

Refusal = Callable[[Request], Awaitable[Response]]


def refused_in(scope: Scope) -> str | None:
    """Where the request's path, query string or headers hold what the boundary refuses
    ("path", "query", "header"), or None."""
    if not is_text(scope["path"]):
        return "path"
    query: bytes = scope.get("query_string", b"")
    if query and _QUERY_NEEDS_A_LOOK.search(query):
        # Parsed exactly as Starlette's QueryParams parses it for the handlers.
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        if any(not is_text(name) or not is_text(value) for name, value in pairs):
            return "query"
    headers = scope["headers"]
    if not isinstance(headers, list):
        # Any iterable is allowed: read once, kept for the layers below as Starlette does.
        headers = scope["headers"] = list(headers)
    if b"\t".join(part for header in headers for part in header).translate(None, _HEADER_BYTES):
        return "header"
    return None


def mark_refused(scope: Scope, where: str) -> None:
    """Tell the access log that the request's input was refused, and where: it then
    writes no path (carebridge.http.middleware)."""
    scope.setdefault("state", {})["input_refused"] = where


def without_bad_cookies(header: bytes, names: Collection[str]) -> bytes:
    """A Cookie header without the cookies named in ``names`` whose value, as Starlette
    parses it, is not text; everything else in it as it came."""
    if header.isascii() and b"\\" not in header and b"\t" not in header:
        return header
    kept = []
    for chunk in header.split(b";"):  # as Starlette's cookie_parser splits it
        text = chunk.decode("latin-1")
        name = text.partition("=")[0].strip() if "=" in text else ""
        if name in names and not all(is_text(value) for value in cookie_parser(text).values()):
            continue
        kept.append(chunk)
    return b";".join(kept)


class InputBoundaryMiddleware:
    """Refuses a request whose path, query string or headers are not text, before any
    route sees it, answered by ``refusal`` (the shape fits the path: an OAuth error, a
    problem or a page); the access log learns where, never what. Of the cookies named
    in ``cookies`` (the ones the app reads), drops any that is not text from the request,
    so that every reader finds it absent."""

    def __init__(self, app: ASGIApp, *, refusal: Refusal, cookies: Collection[str]) -> None:
        self.app = app
        self.refusal = refusal
        self.cookies = frozenset(cookies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = refused_in(scope)
        if where is not None:
            mark_refused(scope, where)
            response = await self.refusal(Request(scope, receive))
            await response(scope, receive, send)
            return
        headers = scope["headers"]  # a list now (refused_in)
        for index, (name, value) in enumerate(headers):
            if name == b"cookie":
                kept = without_bad_cookies(value, self.cookies)
                if kept is not value:
                    headers[index] = (name, kept)
        await self.app(scope, receive, send)
