"""The demo provider app's webhook receiver: seeding registers it for the demo client
(when loopback receivers are allowed), it keeps only deliveries that the standardwebhooks
library verifies, each once, and the app's page lists them. The worker's real delivery to
it runs in tests/browser/test_whole_journey.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from standardwebhooks import Webhook
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.demo import provider_webhooks, seed
from carebridge.demo.seed import DemoConfig
from carebridge.events import endpoints
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from tests.carebridge.demo.test_provider_app import ISSUER

RECEIVER = "/demo/provider/webhooks"


def _demo(tmp_path: Path, database_url: str, *, loopback: bool) -> Runtime:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        issuer=ISSUER,
        demo=True,
        webhook_allow_loopback=loopback,
    )
    return Runtime.build(settings)


@pytest.fixture
def demo(tmp_path: Path, database_url: str) -> Iterator[tuple[Runtime, TestClient, DemoConfig]]:
    runtime = _demo(tmp_path, database_url, loopback=True)
    config = seed.seed(runtime)
    app = create_app(runtime)
    app.state.demo_transport = httpx2.ASGITransport(app=app)
    with TestClient(app, base_url=ISSUER, raise_server_exceptions=False) as client:
        yield runtime, client, config
    runtime.close()


def _signed(
    secret: str, webhook_id: str, thread: str, at: datetime | None = None
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"type": "thread.created", "data": {"thread": thread}}).encode()
    moment = at or datetime.now(UTC)
    signature = Webhook(secret).sign(webhook_id, moment, body.decode())
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
    return body, headers


def test_seeding_registers_one_endpoint_for_the_demo_client_and_keeps_its_secret(
    demo: tuple[Runtime, TestClient, DemoConfig],
) -> None:
    runtime, _, config = demo
    assert config.webhook_secret is not None
    again = seed.seed(runtime)
    assert again.webhook_secret == config.webhook_secret
    with runtime.sessions() as db:
        found = endpoints.list_endpoints(db, config.client_id)
    assert [(e.url, e.enabled) for e in found] == [(f"{ISSUER}{RECEIVER}", True)]


def test_a_verified_delivery_is_kept_once_and_listed(
    demo: tuple[Runtime, TestClient, DemoConfig],
) -> None:
    runtime, client, config = demo
    assert config.webhook_secret is not None
    body, headers = _signed(config.webhook_secret, "msg_1", "th_one")
    for _ in range(2):  # a retried delivery: same webhook-id
        assert client.post(RECEIVER, content=body, headers=headers).status_code == 204
    assert [e["id"] for e in provider_webhooks.recent(runtime)] == ["msg_1"]
    assert provider_webhooks.recent(runtime)[0]["data"] == {"thread": "th_one"}


def test_a_forged_webhook_is_refused_by_the_demo_receiver(
    demo: tuple[Runtime, TestClient, DemoConfig],
) -> None:
    runtime, client, _ = demo
    forged_body, forged = _signed("whsec_" + "A" * 43, "msg_forged", "th_forged")
    assert client.post(RECEIVER, content=forged_body, headers=forged).status_code == 400
    assert provider_webhooks.recent(runtime) == []


def test_a_replayed_old_webhook_is_refused_by_the_demo_receiver(
    demo: tuple[Runtime, TestClient, DemoConfig],
) -> None:
    runtime, client, config = demo
    assert config.webhook_secret is not None
    old = datetime.now(UTC) - timedelta(hours=1)
    body, headers = _signed(config.webhook_secret, "msg_old", "th_old", at=old)
    assert client.post(RECEIVER, content=body, headers=headers).status_code == 400
    assert provider_webhooks.recent(runtime) == []


def test_a_tampered_webhook_body_is_refused_by_the_demo_receiver(
    demo: tuple[Runtime, TestClient, DemoConfig],
) -> None:
    runtime, client, config = demo
    assert config.webhook_secret is not None
    body, headers = _signed(config.webhook_secret, "msg_2", "th_mine")
    tampered = body.replace(b"th_mine", b"th_else")
    assert client.post(RECEIVER, content=tampered, headers=headers).status_code == 400
    assert provider_webhooks.recent(runtime) == []


def test_without_loopback_receivers_the_demo_runs_without_webhooks(
    tmp_path: Path, database_url: str
) -> None:
    runtime = _demo(tmp_path, database_url, loopback=False)
    try:
        config = seed.seed(runtime)
        assert config.webhook_secret is None
        with runtime.sessions() as db:
            assert endpoints.list_endpoints(db, config.client_id) == []
        with TestClient(create_app(runtime), base_url=ISSUER) as client:
            assert client.post(RECEIVER, content=b"{}").status_code == 404
    finally:
        runtime.close()
