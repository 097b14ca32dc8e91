"""Reading request bodies safely: size limits first, then parsing, then validation.

Pages post forms (CSRF-checked here); the JSON API posts JSON validated by a pydantic
model. Validation errors name fields and say what is wrong, never echoing the value.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.types import Message

from carebridge.http import csrf
from carebridge.http.problems import Problem

MAX_BODY = 64 * 1024
M = TypeVar("M", bound=BaseModel)


def _check_size(request: Request) -> None:
    length = request.headers.get("content-length", "")
    if length and (not length.isdigit() or int(length) > MAX_BODY):
        raise Problem(413, f"The request body is over {MAX_BODY // 1024} KiB.")


async def _body(request: Request) -> bytes:
    _check_size(request)
    body = bytearray()
    async for chunk in request.stream():  # also bounds a body sent without a length
        body += chunk
        if len(body) > MAX_BODY:
            raise Problem(413, f"The request body is over {MAX_BODY // 1024} KiB.")
    return bytes(body)


async def read_form(request: Request) -> FormData:
    """A page's posted form, CSRF-checked (403 otherwise). Files are not accepted.

    The whole body is read first, bounded like a JSON body (a chunked one has no length
    to check), and the form parsed from those bytes.
    """
    body = await _body(request)

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    bounded = Request(request.scope, replay)
    form = await bounded.form(max_files=0, max_fields=50, max_part_size=MAX_BODY)
    csrf.verify(request, form)
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
    body = await _body(request)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise Problem(400, "The request body is not valid.", errors=field_errors(exc)) from None
