"""Webhooks to a real receiver that verifies with the standardwebhooks library: every
event once (by webhook-id) through failures, IDs only, never to a redirect's target nor
to an address that is not public, resolved or rebound."""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select, update
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.testclient import TestClient

from carebridge import outbox
from carebridge.app import create_app
from carebridge.db import transaction
from carebridge.events import address, endpoints, operations
from carebridge.events.delivery import WebhookHandler
from carebridge.runtime import Runtime
from carebridge.settings import Settings
from carebridge.utc import utcnow
from identity.oidc import clients
from messaging import care_teams
from tests.carebridge.events.receiver import Receiver, serve, types_of
from tests.messaging.conftest import PROVIDER_APP, World, build_world, start_thread


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # The receiver listens on loopback: allowed only by this test setting.
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        webhook_allow_loopback=True,
        webhook_timeout_seconds=1.0,
    )


@pytest.fixture
def world(runtime: Runtime, tmp_path: Path) -> World:
    return build_world(runtime, tmp_path)


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve(Receiver())


def register(runtime: Runtime, receiver: Receiver, url: str | None = None) -> str:
    with transaction(runtime.sessions) as db:
        created = endpoints.add(
            db,
            runtime.keyring,
            runtime.settings,
            client_id=PROVIDER_APP,
            url=url or receiver.url,
            actor="test",
        )
    receiver.secret = created.secret
    return created.endpoint.id


def channels(handler: WebhookHandler) -> outbox.Channels:
    return outbox.Channels(handlers={handler.channel: handler})


def deliver_all(runtime: Runtime, handler: WebhookHandler, *, rounds: int = 1) -> None:
    """Run the outbox worker ``rounds`` times; between rounds the backoff has passed (the
    retries are made due now)."""
    for _ in range(rounds):
        outbox.drain(runtime, channels(handler), max_seconds=10)
        with transaction(runtime.sessions) as db:
            db.execute(
                update(outbox.OutboxMessage)
                .where(
                    outbox.OutboxMessage.channel == "webhook",
                    outbox.OutboxMessage.state == outbox.PENDING,
                )
                .values(due_at=utcnow())
            )


def webhook_rows(runtime: Runtime) -> list[outbox.OutboxMessage]:
    with runtime.sessions() as db:
        return list(
            db.scalars(
                select(outbox.OutboxMessage).where(outbox.OutboxMessage.channel == "webhook")
            )
        )


def test_the_team_app_hears_of_a_thread_and_a_reply_signed_and_with_ids_only(
    runtime: Runtime, world: World, client: TestClient, receiver: Receiver
) -> None:
    register(runtime, receiver)
    thread_id = start_thread(client, world, subject="Your biopsy", body="Call us about it")
    reply = client.post(
        f"/api/v1/messaging/threads/{thread_id}/messages",
        json={"body": "I will call tomorrow"},
        headers=world.patient("zeb"),
    )
    assert reply.status_code == 201, reply.text
    deliver_all(runtime, WebhookHandler(runtime))
    assert types_of(receiver) == ["message.created", "message.created", "thread.created"]
    assert receiver.refused == 0
    for delivery in receiver.raw:
        text = delivery.body.decode()
        for secret_word in ("biopsy", "Call us", "tomorrow"):
            assert secret_word not in text
    created = next(p for p in receiver.events.values() if p["type"] == "thread.created")
    assert created["data"]["thread"] == thread_id
    assert created["data"]["patient"] == world.patients["zeb"]
    assert all(row.state == outbox.DONE for row in webhook_rows(runtime))


def test_a_receiver_that_fails_then_recovers_gets_every_event_once(
    runtime: Runtime, world: World, client: TestClient, receiver: Receiver, closed_port: int
) -> None:
    endpoint_id = register(runtime, receiver)
    start_thread(client, world)
    # Two events (thread.created, message.created): 500s, a hang past the timeout, then fine.
    receiver.failures = ["500", "hang", "500", "500"]
    handler = WebhookHandler(runtime)
    deliver_all(runtime, handler, rounds=4)
    assert types_of(receiver) == ["message.created", "thread.created"]
    assert receiver.requests >= 6  # each was tried again after its failures
    # Down for a while: the next event cannot connect, then the receiver is back.
    with transaction(runtime.sessions) as db:
        endpoint = db.get(endpoints.WebhookEndpoint, endpoint_id)
        assert endpoint is not None
        endpoint.url = f"http://127.0.0.1:{closed_port}/hooks"
    thread_id = start_thread(client, world, patient="otto")
    deliver_all(runtime, handler, rounds=2)
    assert [r.last_error for r in webhook_rows(runtime) if r.state == outbox.PENDING] == [
        "connect",
        "connect",
    ]
    with transaction(runtime.sessions) as db:
        endpoint = db.get(endpoints.WebhookEndpoint, endpoint_id)
        assert endpoint is not None
        endpoint.url = receiver.url
    deliver_all(runtime, handler, rounds=2)
    threads = {p["data"]["thread"] for p in receiver.events.values()}
    assert thread_id in threads
    assert len(receiver.events) == 4  # each event once, whatever the retries
    assert all(row.state == outbox.DONE for row in webhook_rows(runtime))


def test_a_receiver_that_never_recovers_ends_as_a_dead_letter_an_operator_replays(
    runtime: Runtime, world: World, client: TestClient, receiver: Receiver
) -> None:
    endpoint_id = register(runtime, receiver)
    start_thread(client, world)
    receiver.failures = ["500"] * 100
    handler = WebhookHandler(runtime)
    deliver_all(runtime, handler, rounds=10)
    with runtime.sessions() as db:
        dead = operations.dead_deliveries(db, endpoint_id=endpoint_id)
    assert {d.event_type for d in dead} == {"thread.created", "message.created"}
    assert {d.last_error for d in dead} == {"http_500"}
    receiver.failures = []
    with transaction(runtime.sessions) as db:
        assert operations.replay_endpoint(db, endpoint_id, actor="test") == 2
    deliver_all(runtime, handler)
    assert types_of(receiver) == ["message.created", "thread.created"]


def test_a_forged_or_replayed_event_is_refused_by_the_receivers_library(
    runtime: Runtime, world: World, client: TestClient, receiver: Receiver
) -> None:
    register(runtime, receiver)
    start_thread(client, world)
    deliver_all(runtime, WebhookHandler(runtime))
    genuine = receiver.raw[0]
    verifier = Webhook(receiver.secret)
    verifier.verify(genuine.body, genuine.headers)
    forged_body = genuine.body.replace(b"thread.created", b"thread.closed").replace(
        b"message.created", b"thread.closed"
    )
    with pytest.raises(WebhookVerificationError):
        verifier.verify(forged_body, genuine.headers)
    with pytest.raises(WebhookVerificationError):  # signed with another secret
        Webhook(endpoints.new_secret()).verify(genuine.body, genuine.headers)
    # Replayed later: the signed timestamp is too old (the library allows five minutes).
    old = datetime.fromtimestamp(int(genuine.headers["webhook-timestamp"])) - timedelta(minutes=10)
    replayed = {**genuine.headers, "webhook-timestamp": str(int(old.timestamp()))}
    with pytest.raises(WebhookVerificationError):
        verifier.verify(genuine.body, replayed)
    # And at the receiver itself, over HTTP: refused, not recorded.
    before = len(receiver.events)
    signed = {k: v for k, v in genuine.headers.items() if k.startswith("webhook-")}
    response = httpx.post(receiver.url, content=forged_body, headers=signed)
    assert response.status_code == 400
    assert len(receiver.events) == before


def test_during_a_rotation_both_secrets_verify_and_the_old_one_stops_after(
    runtime: Runtime, world: World, client: TestClient, receiver: Receiver
) -> None:
    endpoint_id = register(runtime, receiver)
    old_secret = receiver.secret
    with transaction(runtime.sessions) as db:
        rotated = endpoints.rotate(db, runtime.keyring, runtime.settings, endpoint_id, actor="t")
    start_thread(client, world)
    deliver_all(runtime, WebhookHandler(runtime))
    delivery = receiver.raw[0]
    assert len(delivery.headers["webhook-signature"].split(" ")) == 2
    Webhook(old_secret).verify(delivery.body, delivery.headers)
    Webhook(rotated.secret).verify(delivery.body, delivery.headers)
    with transaction(runtime.sessions) as db:
        endpoint = db.get(endpoints.WebhookEndpoint, endpoint_id)
        assert endpoint is not None
        endpoint.previous_until = utcnow() - timedelta(seconds=1)
    start_thread(client, world, patient="otto")
    receiver.raw.clear()
    deliver_all(runtime, WebhookHandler(runtime))
    latest = receiver.raw[0]
    assert len(latest.headers["webhook-signature"].split(" ")) == 1
    with pytest.raises(WebhookVerificationError):
        Webhook(old_secret).verify(latest.body, latest.headers)


def test_a_redirect_is_not_followed(
    runtime: Runtime, world: World, client: TestClient, receiver: Receiver
) -> None:
    register(runtime, receiver)
    elsewhere = Receiver()
    for target in serve(elsewhere):
        elsewhere.secret = receiver.secret
        receiver.failures = [f"redirect:{target.url}"] * 2
        start_thread(client, world)
        deliver_all(runtime, WebhookHandler(runtime))
        assert target.requests == 0
    assert {r.last_error for r in webhook_rows(runtime)} == {"redirect"}


class Answers:
    """A resolver whose answers the test sets, and changes between lookups."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)

    def __call__(self, host: str, port: int) -> Sequence[str]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.mark.parametrize(
    "resolved",
    [
        ["10.0.0.7"],
        ["169.254.169.254"],  # the cloud metadata service
        ["fd00:ec2::254"],  # its IPv6 address
        ["100.64.0.1"],  # CGNAT
        ["224.0.0.1"],
        ["0.0.0.0"],  # noqa: S104
        ["::ffff:10.0.0.1"],  # IPv4 inside IPv6
        ["93.184.215.14", "192.168.1.1"],  # one private answer among public ones
    ],
)
def test_delivery_to_a_name_resolving_to_a_private_address_is_refused(
    runtime: Runtime, world: World, client: TestClient, receiver: Receiver, resolved: list[str]
) -> None:
    register(runtime, receiver, url=f"http://hooks.example:{receiver.port}/hooks")
    start_thread(client, world)
    deliver_all(runtime, WebhookHandler(runtime, resolver=Answers(resolved)))
    assert receiver.requests == 0
    assert {(r.state, r.last_error) for r in webhook_rows(runtime)} == {
        (outbox.DEAD, "refused_address")
    }


def test_loopback_is_refused_without_the_test_setting(
    tmp_path: Path, database_url: str, receiver: Receiver
) -> None:
    plain = Runtime.build(Settings(data_dir=tmp_path / "data", database_url=database_url))
    try:
        world = build_world(plain, tmp_path)
        with TestClient(create_app(plain), raise_server_exceptions=False) as api:
            register(plain, receiver, url=f"http://hooks.example:{receiver.port}/hooks")
            start_thread(api, world)
            deliver_all(plain, WebhookHandler(plain, resolver=Answers(["127.0.0.1"])))
        assert receiver.requests == 0
        assert {r.last_error for r in webhook_rows(plain)} == {"refused_address"}
    finally:
        plain.close()


class Recording(httpx.BaseTransport):
    """The real transport, noting where each connection went."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.targets: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.targets.append(str(request.url.host))
        return self.inner.handle_request(request)


def test_dns_rebinding_between_the_check_and_the_connection_is_refused(
    tmp_path: Path, database_url: str, receiver: Receiver
) -> None:
    """The name answers a public address when checked, then loopback (the receiver):
    the connection goes to the checked address, never to a second answer."""
    plain = Runtime.build(
        Settings(data_dir=tmp_path / "data", database_url=database_url, webhook_timeout_seconds=0.5)
    )
    try:
        world = build_world(plain, tmp_path)
        with TestClient(create_app(plain), raise_server_exceptions=False) as api:
            register(plain, receiver, url=f"http://rebind.example:{receiver.port}/hooks")
            start_thread(api, world)
        transport = Recording()
        rebinding = Answers(["93.184.215.14"], ["127.0.0.1"])
        handler = WebhookHandler(plain, resolver=rebinding, transport=transport)
        deliver_all(plain, handler, rounds=2)
        assert receiver.requests == 0
        assert set(transport.targets) <= {"93.184.215.14"}
        # The next look-up answered loopback: refused before any connection.
        assert "refused_address" in {r.last_error for r in webhook_rows(plain)}
    finally:
        plain.close()


def test_an_endpoint_must_be_https_in_production_and_not_a_private_literal(
    tmp_path: Path,
) -> None:
    production = Settings(data_dir=tmp_path, env="production")
    with pytest.raises(endpoints.EndpointError):
        endpoints.check_url(production, "http://hooks.example.org/in")
    assert endpoints.check_url(production, "https://hooks.example.org/in")
    development = Settings(data_dir=tmp_path)
    assert endpoints.check_url(development, "http://hooks.example.org/in")
    for url in ("https://10.1.2.3/in", "https://[::1]/in", "https://user:pw@hooks.example.org/"):
        with pytest.raises(endpoints.EndpointError):
            endpoints.check_url(development, url)


def test_a_disabled_endpoint_gets_nothing_and_its_queued_events_become_dead_letters(
    runtime: Runtime, world: World, client: TestClient, receiver: Receiver
) -> None:
    endpoint_id = register(runtime, receiver)
    start_thread(client, world)
    with transaction(runtime.sessions) as db:
        endpoints.set_enabled(db, endpoint_id, enabled=False, actor="t")
    start_thread(client, world, patient="otto")  # no delivery queued for a disabled endpoint
    deliver_all(runtime, WebhookHandler(runtime))
    assert receiver.requests == 0
    assert {(r.state, r.last_error) for r in webhook_rows(runtime)} == {
        (outbox.DEAD, "endpoint_disabled")
    }
    assert len(webhook_rows(runtime)) == 2


def test_production_refuses_the_loopback_setting(tmp_path: Path) -> None:
    production = Settings(data_dir=tmp_path, env="production", webhook_allow_loopback=True)
    assert any("WEBHOOK_ALLOW_LOOPBACK" in problem for problem in production.production_problems())
    # Even if it ran: a loopback literal is refused at registration in production.
    with pytest.raises(endpoints.EndpointError):
        endpoints.check_url(production, "https://127.0.0.1/in")


@pytest.mark.parametrize(
    "resolved",
    [
        ["64:ff9b::a00:7"],  # NAT64's well-known prefix carrying 10.0.0.7
        ["64:ff9b::a9fe:a9fe"],  # ... carrying the metadata service
        ["64:ff9b:1::a00:7"],  # local-use NAT64
        ["::a00:7"],  # IPv4-compatible (deprecated, still routed by some stacks)
        ["::ffff:0:a00:7"],  # SIIT IPv4-translated
        ["2002:a00:7::1"],  # 6to4 of 10.0.0.7
        ["2001:0:4136:e378:8000:63bf:f5ff:fff8"],  # Teredo
        ["fec0::1"],  # site-local (deprecated)
        ["fe80::1%eth0"],  # link-local with a zone
        ["ff02::1"],  # multicast
    ],
)
def test_an_ipv6_form_of_a_private_address_is_refused(
    runtime: Runtime, world: World, client: TestClient, receiver: Receiver, resolved: list[str]
) -> None:
    register(runtime, receiver, url=f"http://hooks.example:{receiver.port}/hooks")
    start_thread(client, world)
    deliver_all(runtime, WebhookHandler(runtime, resolver=Answers(resolved)))
    assert receiver.requests == 0
    assert {(r.state, r.last_error) for r in webhook_rows(runtime)} == {
        (outbox.DEAD, "refused_address")
    }


@pytest.mark.parametrize(
    "url",
    [
        "https://[64:ff9b::a00:7]/in",
        "https://[::a00:7]/in",
        "https://[fec0::1]/in",
        "https://[fe80::1%25eth0]/in",
        "https://[::ffff:169.254.169.254]/in",
    ],
)
def test_registering_an_ipv6_literal_of_a_private_address_is_refused(
    tmp_path: Path, url: str
) -> None:
    with pytest.raises(endpoints.EndpointError):
        endpoints.check_url(Settings(data_dir=tmp_path), url)


def test_a_public_address_through_nat64_is_still_allowed() -> None:
    """On an IPv6-only network (DNS64) public IPv4 hosts answer in 64:ff9b::/96."""
    assert address.is_allowed(ipaddress.ip_address("64:ff9b::5db8:d70e"), allow_loopback=False)
    assert address.is_allowed(ipaddress.ip_address("2606:4700::1111"), allow_loopback=False)


def test_a_receiver_dripping_an_endless_body_holding_the_worker_is_refused(
    runtime: Runtime, world: World, client: TestClient, receiver: Receiver
) -> None:
    """Only the status counts: the body is never read, so a receiver cannot keep the
    worker (each byte inside the read timeout) nor fill its memory."""
    register(runtime, receiver)
    receiver.failures = ["drip"]
    start_thread(client, world)
    started = time.monotonic()
    deliver_all(runtime, WebhookHandler(runtime))
    assert time.monotonic() - started < 5
    assert {r.state for r in webhook_rows(runtime)} == {outbox.DONE}


def test_a_disabled_clients_receiver_hearing_on_is_refused(
    runtime: Runtime, world: World, client: TestClient, receiver: Receiver
) -> None:
    """A client disabled (compromised, retired) with deliveries still queued: its
    endpoints are disabled with it, so its receiver hears nothing more."""
    with transaction(runtime.sessions) as db:
        team_app = clients.create(
            db,
            runtime.settings,
            name="Team desk",
            client_type="confidential",
            redirect_uris=["https://desk.example/cb"],
            scopes=["messaging.read"],
        ).client_id
        created = endpoints.add(
            db, runtime.keyring, runtime.settings, client_id=team_app, url=receiver.url, actor="t"
        )
    receiver.secret = created.secret
    care_teams.add_client(runtime, world.team, team_app, actor="t")
    start_thread(client, world)
    with transaction(runtime.sessions) as db:
        assert clients.disable(db, team_app)
    deliver_all(runtime, WebhookHandler(runtime))
    assert receiver.requests == 0
    rows = webhook_rows(runtime)
    assert len(rows) == 2
    assert {(r.state, r.last_error) for r in rows} == {(outbox.DEAD, "endpoint_disabled")}
    with runtime.sessions() as db:
        assert [e.enabled for e in endpoints.list_endpoints(db, team_app)] == [False]


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` only, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_a_pooled_tls_connection_skipping_the_next_names_certificate_is_refused(
    runtime: Runtime, world: World, client: TestClient, tmp_path: Path
) -> None:
    """Two names pinned to one address share an origin (the address): a connection
    kept open after a delivery to the first, whose certificate it checked, must not
    carry the second's deliveries, whose certificate does not match."""
    cert, key = _certificate(tmp_path, "a.example")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    for receiver in serve(Receiver(), tls=server_tls):
        first = register(runtime, receiver, url=f"https://a.example:{receiver.port}/hooks")
        handler = WebhookHandler(
            runtime,
            resolver=Answers(["127.0.0.1"]),
            transport=httpx.HTTPTransport(verify=trusting),
        )
        start_thread(client, world)
        deliver_all(runtime, handler)
        assert len(receiver.events) == 2  # a.example's certificate verified
        with transaction(runtime.sessions) as db:
            endpoints.set_enabled(db, first, enabled=False, actor="t")
        register(runtime, receiver, url=f"https://b.example:{receiver.port}/hooks")
        start_thread(client, world, patient="otto")
        deliver_all(runtime, handler)
        assert receiver.requests == 2  # nothing for b.example: its certificate is not there
        assert {r.last_error for r in webhook_rows(runtime) if r.state == outbox.PENDING} == {
            "connect"
        }


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/in",  # 127.0.0.1 in decimal
        "http://0x7f000001/in",  # ... in hex
        "http://0177.0.0.1/in",  # ... in octal
        "http://127.1/in",  # ... shortened
        "http://0/in",  # 0.0.0.0
        "http://LOCALHOST/in",
        "http://[::ffff:7f00:1]/in",
    ],
)
def test_an_ip_literal_in_decimal_octal_or_hex_form_is_refused(url: str) -> None:
    """inet_aton's forms are not literals to ipaddress; the system resolver turns them
    into the address, which is what is checked."""
    with pytest.raises(address.RefusedAddressError):
        address.pin(url, address.resolve, allow_loopback=False)


@pytest.mark.parametrize(
    "url",
    [
        "https://@hooks.example/in",  # an empty user name
        "https://hooks.example\\@10.0.0.1/in",
        "https://hooks.ex\u0430mple.org/in",  # a Cyrillic a
        "https://b\u00fccher.example/in",
    ],
)
def test_registering_a_url_with_userinfo_or_a_non_ascii_host_is_refused(
    tmp_path: Path, url: str
) -> None:
    with pytest.raises(endpoints.EndpointError):
        endpoints.check_url(Settings(data_dir=tmp_path), url)
    assert endpoints.check_url(Settings(data_dir=tmp_path), "https://xn--bcher-kva.example/in")
