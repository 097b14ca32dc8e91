"""messaging's HTTP routes, for carebridge.app to mount."""

from __future__ import annotations

from starlette.routing import BaseRoute

from messaging import admin_api, api, pages, staff_pages


def routes() -> list[BaseRoute]:
    return [*api.routes(), *admin_api.routes(), *pages.routes(), *staff_pages.routes()]
