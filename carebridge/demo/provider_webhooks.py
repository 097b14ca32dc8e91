"""The demo provider app hears of events by webhook, as a real app would.

Seeding registers one endpoint for the demo client, pointing at this app's own receiver
(``/demo/provider/webhooks`` on the issuer). The issuer is usually a loopback address, so
registration needs ``CAREBRIDGE_WEBHOOK_ALLOW_LOOPBACK`` (``serve --demo`` sets it;
production refuses it); without it the demo runs without webhooks. The receiver verifies
every delivery with the ``standardwebhooks`` library, keeps each event once (by
``webhook-id``: deliveries are retried) in ``<data dir>/demo-provider-events.jsonl``, a
file so that every server process sees the same list, and the app's page lists them.
Events carry IDs only; the page fetches content with the clinician's token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.requests import Request
from starlette.responses import Response

from carebridge.db import transaction
from carebridge.events import endpoints
from carebridge.runtime import Runtime

RECEIVER = "/webhooks"  # under the app's path
SHOWN = 20  # the newest events the page lists
_MAX_BODY = 64 * 1024  # an event is IDs only: anything bigger is not one of ours


def _events_file(runtime: Runtime) -> Path:
    return runtime.settings.data_dir / "demo-provider-events.jsonl"


def register(runtime: Runtime, client_id: str, url: str, known_secret: str | None) -> str | None:
    """The signing secret of the demo client's endpoint at ``url``, registering it (or
    rotating it when the secret was lost) as needed; None when the URL is refused (a
    loopback issuer without CAREBRIDGE_WEBHOOK_ALLOW_LOOPBACK): the demo goes without."""
    settings = runtime.settings
    with transaction(runtime.sessions) as db:
        found = [e for e in endpoints.list_endpoints(db, client_id) if e.url == url]
        try:
            if not found:
                created = endpoints.add(
                    db, runtime.keyring, settings, client_id=client_id, url=url, actor="demo-seed"
                )
                return created.secret
        except endpoints.EndpointError:
            return None
        if not found[0].enabled:
            endpoints.set_enabled(db, found[0].id, enabled=True, actor="demo-seed")
        if known_secret is not None:
            return known_secret
        return endpoints.rotate(
            db, runtime.keyring, settings, found[0].id, actor="demo-seed"
        ).secret


async def receive(request: Request, secret: str | None) -> Response:
    """Verify a delivery (signature, timestamp) and keep its event once; 400 otherwise,
    so a forged or stale delivery is neither kept nor retried as a success."""
    if secret is None:
        return Response(status_code=404)
    body = await request.body()
    if len(body) > _MAX_BODY:
        return Response(status_code=413)
    try:
        payload = Webhook(secret).verify(body, dict(request.headers))
    except WebhookVerificationError:
        return Response(status_code=400)
    runtime: Runtime = request.app.state.runtime
    webhook_id = request.headers["webhook-id"]
    if webhook_id not in {event["id"] for event in _read(runtime)}:
        record = {"id": webhook_id, "type": payload.get("type"), "data": payload.get("data")}
        with _events_file(runtime).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    return Response(status_code=204)


def _read(runtime: Runtime) -> list[dict[str, Any]]:
    try:
        lines = _events_file(runtime).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def recent(runtime: Runtime) -> list[dict[str, Any]]:
    """The newest events received, newest first."""
    return list(reversed(_read(runtime)[-SHOWN:]))
