"""sms's HTTP routes, for carebridge.app to mount."""

from __future__ import annotations

from starlette.routing import BaseRoute

from sms import api, links, pages, webhooks


def routes() -> list[BaseRoute]:
    return [*pages.routes(), *api.routes(), *links.routes(), *webhooks.routes()]
