"""Operators register endpoints, see dead letters and replay them: by CLI and admin API."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.cli import main
from carebridge.db import transaction
from carebridge.events import endpoints
from carebridge.events.delivery import WebhookHandler
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from identity.oidc import clients
from tests.carebridge.events.receiver import Receiver, serve
from tests.carebridge.events.test_webhooks import deliver_all
from tests.messaging.conftest import World, build_world, start_thread
from tests.tokens import mint


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, webhook_allow_loopback=True
    )


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), raise_server_exceptions=False) as test_client:
        yield test_client


def registered_client(runtime: Runtime) -> str:
    with transaction(runtime.sessions) as db:
        return clients.create(
            db,
            runtime.settings,
            name="Provider",
            client_type="confidential",
            redirect_uris=["https://provider.example/cb"],
            scopes=["messaging.read"],
        ).client_id


def admin(runtime: Runtime, scope: str = "admin.webhooks") -> dict[str, str]:
    token = mint(runtime, sub="ops", client_id="ops", scope=scope)
    return {"Authorization": f"Bearer {token}"}


def test_the_cli_adds_lists_rotates_and_disables_an_endpoint_showing_the_secret_once(
    runtime: Runtime, cli_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    client_id = registered_client(runtime)
    assert main(["webhooks", "add", client_id, "https://hooks.provider.example/in"]) == 0
    out = capsys.readouterr().out
    secret = re.search(r"whsec_\S+", out)
    endpoint_id = re.search(r"whk_\S+", out)
    assert secret and endpoint_id
    assert main(["webhooks", "list"]) == 0
    listed = capsys.readouterr().out
    assert endpoint_id.group() in listed and "enabled" in listed
    assert secret.group() not in listed
    with runtime.sessions() as db:
        endpoint = db.get(endpoints.WebhookEndpoint, endpoint_id.group())
        assert endpoint is not None
        assert secret.group().encode() not in endpoint.secret_sealed  # sealed under the KEK
    assert main(["webhooks", "rotate", endpoint_id.group()]) == 0
    assert "previous secret signs too" in capsys.readouterr().out
    assert main(["webhooks", "disable", endpoint_id.group()]) == 0
    assert main(["webhooks", "add", "no-such-client", "https://x.example/"]) != 0
    assert main(["webhooks", "add", client_id, "https://10.0.0.1/in"]) != 0


def test_operators_list_dead_deliveries_and_replay_them_by_the_admin_api(
    runtime: Runtime, client: TestClient, tmp_path: Path
) -> None:
    world: World = build_world(runtime, tmp_path)
    for receiver in serve(Receiver()):
        added = client.post(
            "/api/v1/admin/webhooks/endpoints",
            json={"client_id": "provider-app", "url": receiver.url},
            headers=admin(runtime),
        )
        # provider-app is a care team's app in this world, not a registered OIDC client.
        assert added.status_code == 422
        with transaction(runtime.sessions) as db:
            created = endpoints.add(
                db,
                runtime.keyring,
                runtime.settings,
                client_id="provider-app",
                url=receiver.url,
                actor="t",
            )
        receiver.secret = created.secret
        receiver.failures = ["500"] * 100
        start_thread(client, world)
        deliver_all(runtime, WebhookHandler(runtime), rounds=10)
        dead = client.get("/api/v1/admin/webhooks/dead", headers=admin(runtime))
        assert dead.status_code == 200
        deliveries = dead.json()["deliveries"]
        assert {d["event_type"] for d in deliveries} == {"thread.created", "message.created"}
        receiver.failures = []
        one = client.post(
            f"/api/v1/admin/webhooks/dead/{deliveries[0]['id']}/replay", headers=admin(runtime)
        )
        assert one.json() == {"replayed": 1}
        rest = client.post(
            f"/api/v1/admin/webhooks/endpoints/{created.endpoint.id}/replay", headers=admin(runtime)
        )
        assert rest.json() == {"replayed": 1}
        deliver_all(runtime, WebhookHandler(runtime))
        assert len(receiver.events) == 2
        disabled = client.post(
            f"/api/v1/admin/webhooks/endpoints/{created.endpoint.id}/disable",
            headers=admin(runtime),
        )
        assert disabled.json()["enabled"] is False
        missing = client.post("/api/v1/admin/webhooks/dead/obx_nope/replay", headers=admin(runtime))
        assert missing.status_code == 404


def test_the_admin_api_registers_an_endpoint_for_a_registered_client(
    runtime: Runtime, client: TestClient
) -> None:
    client_id = registered_client(runtime)
    added = client.post(
        "/api/v1/admin/webhooks/endpoints",
        json={"client_id": client_id, "url": "https://hooks.provider.example/in"},
        headers=admin(runtime),
    )
    assert added.status_code == 201, added.text
    assert added.json()["secret"].startswith("whsec_")
    assert added.headers["cache-control"] == "no-store"
    listed = client.get("/api/v1/admin/webhooks/endpoints", headers=admin(runtime)).json()
    assert "secret" not in str(listed)
    private = client.post(
        "/api/v1/admin/webhooks/endpoints",
        json={"client_id": client_id, "url": "http://169.254.169.254/latest"},
        headers=admin(runtime),
    )
    assert private.status_code == 400
    wrong_scope = client.get(
        "/api/v1/admin/webhooks/endpoints", headers=admin(runtime, "admin.roster")
    )
    assert wrong_scope.status_code == 403


def test_an_endpoint_for_a_disabled_client_is_refused(
    runtime: Runtime, client: TestClient, cli_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """Disabling a client disables its endpoints; neither a new one (CLI, API) nor
    enabling an old one brings its receiver back."""
    client_id = registered_client(runtime)
    assert main(["webhooks", "add", client_id, "https://hooks.provider.example/in"]) == 0
    endpoint_id = re.search(r"whk_\S+", capsys.readouterr().out)
    assert endpoint_id
    with transaction(runtime.sessions) as db:
        assert clients.disable(db, client_id)
    assert main(["webhooks", "add", client_id, "https://hooks.provider.example/2"]) != 0
    assert main(["webhooks", "enable", endpoint_id.group()]) != 0
    added = client.post(
        "/api/v1/admin/webhooks/endpoints",
        json={"client_id": client_id, "url": "https://hooks.provider.example/3"},
        headers=admin(runtime),
    )
    assert added.status_code == 422
    with runtime.sessions() as db:
        assert [e.enabled for e in endpoints.list_endpoints(db, client_id)] == [False]
