"""messaging's HTTP routes, for carebridge.app to mount."""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
