"""Reading a request body with a bound: refused as soon as it is known to be too large.

A declared ``Content-Length`` over the bound (or one that is not a number) is refused
before a byte is read; a chunked body, which declares none, is counted as it arrives and
refused at the first chunk that takes it over. Every endpoint that reads a body reads it
here; each says how a refusal is answered (a 413 problem, an OAuth error), so the
exception to raise is the caller's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request


def bounded_chunks(request: Request, limit: int, too_large: Exception) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; ``too_large`` is raised at once for a declared
    length over ``limit``, and while reading when the chunks add up to more."""
    length = request.headers.get("content-length", "")
    if length and (not length.isdigit() or int(length) > limit):
        raise too_large
    return _counted(request, limit, too_large)


async def _counted(request: Request, limit: int, too_large: Exception) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        yield chunk


async def read_bounded(request: Request, limit: int, too_large: Exception) -> bytes:
    """The whole body, at most ``limit`` bytes (``too_large`` is raised otherwise)."""
    body = bytearray()
    async for chunk in bounded_chunks(request, limit, too_large):
        body += chunk
    return bytes(body)
