"""Reading request bodies safely: size limits first, then parsing, then validation.

Pages post forms (CSRF-checked here); the JSON API posts JSON validated by a pydantic
model. Validation errors name fields and say what is wrong, never echoing the value.
Every field passes the input boundary (carebridge.http.boundary): no control character
or lone surrogate, save tab and line breaks in fields declared multiline.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.types import Message

from carebridge.http import boundary, csrf
from carebridge.http.body import read_bounded
from carebridge.http.problems import Problem

MAX_BODY = 64 * 1024
M = TypeVar("M", bound=BaseModel)


async def _body(request: Request) -> bytes:
    too_large = Problem(413, f"The request body is over {MAX_BODY // 1024} KiB.")
    return await read_bounded(request, MAX_BODY, too_large)


async def read_form(request: Request, *, multiline: Collection[str] = ()) -> FormData:
    """A page's posted form, CSRF-checked (403 otherwise). Files are not accepted.

    The whole body is read first, bounded like a JSON body (a chunked one has no length
    to check), and the form parsed from those bytes. The fields named in ``multiline``
    may hold tab and line breaks.
    """
    return await parse_form(request, await _body(request), multiline=multiline)


async def parse_form(
    request: Request,
    body: bytes,
    *,
    multiline: Collection[str] = (),
    max_files: int = 0,
    max_fields: int = 50,
    max_part_size: int = MAX_BODY,
) -> FormData:
    """A page's form parsed from its whole, already bounded ``body``: CSRF-checked (403),
    then every field checked at the input boundary (400); files' contents are bytes."""

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    bounded = Request(request.scope, replay)
    form = await bounded.form(
        max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
    )
    csrf.verify(request, form)
    boundary.check_form(form, multiline)
    return form


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Field names and messages, for a form to show beside its fields or a problem body."""
    return [
        {"field": ".".join(str(part) for part in error["loc"]) or "body", "message": error["msg"]}
        for error in exc.errors(include_url=False, include_input=False)
    ]


async def read_json(request: Request, model: type[M]) -> M:
    """A JSON API body as ``model``, or a 400 problem listing what is wrong per field."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/json":
        raise Problem(415, "Send the body as application/json.")
    return parse_json(await _body(request), model)


def parse_json(body: bytes, model: type[M]) -> M:
    """A bounded JSON body as ``model``: a 400 problem refusing a key or string that is not
    text (fields typed ``boundary.MultilineText`` may hold tab and line breaks), or one
    listing what is wrong per field.

    A body that may hold what the boundary refuses is parsed twice: once as it came, for
    the boundary, then by the model, whose validators may change what they read. In
    JSON a control character can only be escaped (a backslash), DEL aside, a C1 one
    written as UTF-8 (a 0xC2 byte) and a lone surrogate escaped: a body with none of
    these is parsed once (a line break is an escape: a body with one, twice)."""
    if b"\\" in body or b"\xc2" in body or b"\x7f" in body:
        try:
            as_sent = from_json(body)
        except ValueError:
            as_sent = None  # not JSON (a lone surrogate too): the model's parse says so
        boundary.check_json(as_sent, boundary.multiline_fields(model))
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise Problem(400, "The request body is not valid.", errors=field_errors(exc)) from None
