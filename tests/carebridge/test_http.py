"""The HTTP shell: request IDs, access log, security headers, errors, health and metrics."""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.exc import ProgrammingError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.logs import JsonFormatter, RedactingFilter
from carebridge.runtime import Runtime
from carebridge.settings import Settings

SECRET = "db-password=hunter2 at postgres://carebridge:s3cr3t@10.0.0.5/prod"
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
HTML = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
JSON = {"accept": "application/json"}

Lines = Callable[[], list[dict[str, Any]]]
MakeClient = Callable[..., TestClient]


async def _boom(request: Request) -> Response:
    raise RuntimeError(f"{SECRET} for patient jane@example.org")


async def _thread(request: Request) -> Response:
    return JSONResponse({"thread": request.path_params["thread_id"]})


async def _own_headers(request: Request) -> Response:
    headers = {
        "Cache-Control": "public, max-age=60",
        "X-Frame-Options": "SAMEORIGIN",
        "X-Request-ID": "chosen-by-the-handler",
    }
    return JSONResponse({}, headers=headers)


async def _status(request: Request) -> Response:
    return Response(status_code=int(request.path_params["code"]))


class _RawHeaders:
    """A raw ASGI endpoint: its header names keep the case it gives them."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"Cache-Control", b"public, max-age=60"), (b"X-Request-ID", b"raw-app-chose")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})


def _with_test_routes(app: Starlette) -> Starlette:
    app.router.routes.extend(
        [
            Route("/own-headers", _own_headers),
            Route("/raw-headers", _RawHeaders()),
            Route("/status/{code:int}", _status),
            Route("/boom", _boom),
            Route("/api/boom", _boom),
            Route("/threads/{thread_id}", _thread),
        ]
    )
    return app


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[MakeClient]:
    """An app on a never-opened SQLite database: for tests the database plays no part in."""
    runtimes: list[Runtime] = []
    clients: list[TestClient] = []

    def make(**settings: Any) -> TestClient:
        settings.setdefault("data_dir", tmp_path / f"data{len(runtimes)}")
        runtime = Runtime.build(Settings(**settings))
        runtimes.append(runtime)
        client = TestClient(_with_test_routes(create_app(runtime)), raise_server_exceptions=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
    for runtime in runtimes:
        runtime.close()


@pytest.fixture
def shell(make_client: MakeClient) -> TestClient:
    return make_client()


@pytest.fixture
def lines() -> Iterator[Lines]:
    """carebridge's records, through the project's filter and formatter, parsed."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("carebridge")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(level)


def _access(lines: Lines) -> list[dict[str, Any]]:
    return [entry for entry in lines() if entry["logger"] == "carebridge.access"]


# Request IDs


def test_each_request_gets_its_own_request_id(shell: TestClient) -> None:
    first = shell.get("/healthz").headers["x-request-id"]
    second = shell.get("/healthz").headers["x-request-id"]
    assert REQUEST_ID.fullmatch(first)
    assert REQUEST_ID.fullmatch(second)
    assert first != second


@pytest.mark.parametrize(
    "incoming",
    ["lb-7f3a.2c91_0042", "12345678-1234-4234-8234-123456789012", "0123456789abcdef" * 2],
    ids=["proxy token", "uuid", "hex"],
)
def test_well_formed_incoming_request_id_is_kept(
    shell: TestClient, lines: Lines, incoming: str
) -> None:
    response = shell.get("/healthz", headers={"x-request-id": incoming})
    assert response.headers["x-request-id"] == incoming
    [entry] = _access(lines)
    assert entry["request_id"] == incoming


@pytest.mark.parametrize(
    "incoming",
    [
        'abcdef12\n{"level": "critical", "msg": "forged"}',
        "abcdef12\r\nX-Injected: 1",
        'abcdef12" forged="1',
        "abcdef12 forged",
        "a" * 65,
        "short",
        "",
        "555-123-4567",
        "123-45-6789",
        "1980-01-31",
    ],
    ids=[
        "newline json",
        "crlf header",
        "quotes",
        "space",
        "too long",
        "too short",
        "empty",
        "phone-shaped",
        "ssn-shaped",
        "dob-shaped",
    ],
)
def test_log_injection_request_id_is_replaced(
    shell: TestClient, lines: Lines, incoming: str
) -> None:
    response = shell.get("/healthz", headers={"x-request-id": incoming})
    request_id = response.headers["x-request-id"]
    assert REQUEST_ID.fullmatch(request_id)
    [entry] = _access(lines)
    assert entry["request_id"] == request_id


# Access log


def test_access_log_line_describes_the_request_without_its_query(
    shell: TestClient, lines: Lines
) -> None:
    response = shell.get("/threads/t-42?email=jane@example.org&q=secret")
    assert response.status_code == 200
    [entry] = _access(lines)
    assert entry["msg"] == "request"
    assert entry["method"] == "GET"
    assert entry["path"] == "/threads/t-42"
    assert entry["route"] == "/threads/{thread_id}"
    assert entry["status"] == 200
    assert isinstance(entry["duration_ms"], float | int)
    assert entry["duration_ms"] >= 0
    assert entry["request_id"] == response.headers["x-request-id"]
    assert "jane" not in json.dumps(entry)
    assert "secret" not in json.dumps(entry)


def test_access_log_scrubs_phi_in_the_path(shell: TestClient, lines: Lines) -> None:
    shell.get("/threads/555-123-4567")
    [entry] = _access(lines)
    assert entry["path"] == "/threads/[phone]"
    assert entry["route"] == "/threads/{thread_id}"


def test_unmatched_path_is_logged_under_one_route_label(shell: TestClient, lines: Lines) -> None:
    assert shell.get("/no/such/page").status_code == 404
    [entry] = _access(lines)
    assert (entry["route"], entry["status"]) == ("unmatched", 404)


# Security headers


def _assert_security_headers(response: Any) -> None:
    headers = response.headers
    csp = headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert directives["frame-ancestors"] == "'none'"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["x-content-type-options"] == "nosniff"
    assert REQUEST_ID.fullmatch(headers["x-request-id"])


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/", HTML, 200),
        ("GET", "/healthz", {}, 200),
        ("GET", "/static/carebridge.css", {}, 200),
        ("GET", "/no/such/page", HTML, 404),
        ("GET", "/api/nothing", {}, 404),
        ("DELETE", "/healthz", {}, 405),
        ("GET", "/boom", HTML, 500),
        ("GET", "/boom", JSON, 500),
        ("GET", "/", {"host": "evil.example"}, 400),
    ],
    ids=[
        "page",
        "api",
        "static",
        "404 page",
        "404 problem",
        "405",
        "500 page",
        "500 problem",
        "bad host",
    ],
)
def test_security_headers_on_every_response(
    shell: TestClient, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    response = shell.request(method, path, headers=headers)
    assert response.status_code == status
    _assert_security_headers(response)


def test_a_header_the_handler_sets_wins_once_and_the_request_id_is_ours(
    shell: TestClient,
) -> None:
    headers = shell.get("/own-headers").headers
    assert headers.get_list("cache-control") == ["public, max-age=60"]
    assert headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert headers["x-content-type-options"] == "nosniff"
    [request_id] = headers.get_list("x-request-id")
    assert REQUEST_ID.fullmatch(request_id)


def test_header_names_are_matched_whatever_their_case(shell: TestClient) -> None:
    headers = shell.get("/raw-headers").headers
    assert headers.get_list("cache-control") == ["public, max-age=60"]
    [request_id] = headers.get_list("x-request-id")
    assert REQUEST_ID.fullmatch(request_id)


def test_hsts_is_not_sent_for_a_plain_http_issuer(make_client: MakeClient) -> None:
    client = make_client(issuer="http://127.0.0.1:8000")
    assert "strict-transport-security" not in client.get("/healthz").headers


def test_hsts_is_sent_for_an_https_issuer_even_on_errors(make_client: MakeClient) -> None:
    client = make_client(issuer="https://id.example.org")
    for response in (client.get("/healthz"), client.get("/boom", headers=HTML)):
        assert response.headers["strict-transport-security"].startswith("max-age=")


def test_request_with_a_foreign_host_is_refused(shell: TestClient, lines: Lines) -> None:
    response = shell.get("/", headers={"host": "evil.example"})
    assert response.status_code == 400
    [entry] = _access(lines)
    assert entry["status"] == 400


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_answer_whatever_the_host(client: TestClient, path: str) -> None:
    # Orchestrators probe by address; only pages, which build URLs, need the issuer's host.
    assert client.get(path, headers={"host": "10.1.2.3:8000"}).status_code == 200
    assert client.get("/", headers={"host": "10.1.2.3:8000"}).status_code == 400


def test_issuer_host_is_accepted(make_client: MakeClient) -> None:
    client = make_client(issuer="https://id.example.org")
    assert client.get("/healthz", headers={"host": "id.example.org"}).status_code == 200


# Errors


def test_unhandled_exception_reveals_nothing_to_an_api_client(shell: TestClient) -> None:
    response = shell.get("/api/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "about:blank"
    assert body["title"] == "Internal Server Error"
    assert body["status"] == 500
    assert body["request_id"] == response.headers["x-request-id"]
    for leak in ("hunter2", "s3cr3t", "RuntimeError", "Traceback", "jane", "_boom"):
        assert leak not in response.text


def test_unhandled_exception_shows_a_person_a_friendly_page(shell: TestClient) -> None:
    response = shell.get("/boom", headers=HTML)
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/html")
    assert "Something went wrong on our side" in response.text
    assert response.headers["x-request-id"] in response.text
    for leak in ("hunter2", "s3cr3t", "RuntimeError", "Traceback", "jane", "_boom"):
        assert leak not in response.text


def test_unhandled_exception_is_logged_with_its_request_id_and_scrubbed(
    shell: TestClient, lines: Lines
) -> None:
    response = shell.get("/boom", headers=JSON)
    [error] = [entry for entry in lines() if entry["logger"] == "carebridge.errors"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert "RuntimeError" in error["exc"]
    assert "jane@example.org" not in error["exc"]
    assert "hunter2" not in error["exc"]
    [access] = _access(lines)
    assert access["status"] == 500


@pytest.mark.parametrize("path", ["/api/v1/nothing", "/oauth2/nothing", "/.well-known/nothing"])
def test_machine_paths_get_problem_details_whatever_they_accept(
    shell: TestClient, path: str
) -> None:
    response = shell.get(path, headers=HTML)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["type"], body["title"], body["status"]) == ("about:blank", "Not Found", 404)
    assert body["request_id"] == response.headers["x-request-id"]


def test_json_client_gets_problem_details_on_a_page_path(shell: TestClient) -> None:
    response = shell.get("/no/such/page", headers=JSON)
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


def test_person_gets_a_friendly_not_found_page(shell: TestClient) -> None:
    response = shell.get("/no/such/page", headers=HTML)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "Page not found" in response.text
    assert response.headers["x-request-id"] in response.text


def test_wrong_method_keeps_the_allow_header(shell: TestClient) -> None:
    response = shell.delete("/healthz")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}


# Health


def test_healthz_answers_while_the_process_is_up(shell: TestClient) -> None:
    response = shell.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_on_a_migrated_database(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok"},
    }


def test_readyz_is_not_ready_while_migrations_are_pending(
    make_client: MakeClient, empty_database_url: str
) -> None:
    response = make_client(database_url=empty_database_url).get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 503
    assert body["checks"] == {"database": "ok", "migrations": "pending"}


@pytest.mark.parametrize(
    "database_url",
    [
        "postgresql://carebridge:s3cr3t@127.0.0.1:1/carebridge",
        "sqlite:////nonexistent-dir-for-carebridge-tests/carebridge.db",
    ],
    ids=["postgresql closed port", "sqlite missing directory"],
)
def test_readyz_is_not_ready_when_the_database_is_unreachable(
    make_client: MakeClient, lines: Lines, database_url: str
) -> None:
    response = make_client(database_url=database_url).get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["checks"] == {"database": "unreachable", "migrations": "unknown"}
    assert body["request_id"] == response.headers["x-request-id"]
    # The driver's error is for the log; the client learns only which check failed.
    for leak in ("s3cr3t", "127.0.0.1", "nonexistent", "refused", "unable to open"):
        assert leak not in response.text
    [warning] = [entry for entry in lines() if entry["logger"] == "carebridge.health"]
    assert "s3cr3t" not in warning["msg"]


def test_readyz_is_not_ready_when_the_schema_revision_is_unreadable(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(self: Runtime) -> str:
        raise ProgrammingError("SELECT version_num", {}, Exception("permission denied"))

    monkeypatch.setattr(Runtime, "schema_state", denied)
    response = make_client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "migrations": "unknown"}
    assert "permission" not in response.text


# Metrics


def _scrape(client: TestClient, **headers: str) -> str:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_metrics_are_labelled_by_route_template_not_raw_path(shell: TestClient) -> None:
    shell.get("/threads/patient-8c1d")
    shell.get("/threads/patient-8c1e")
    text = _scrape(shell)
    assert 'route="/threads/{thread_id}"' in text
    assert "patient-8c1" not in text


def test_unmatched_paths_share_one_metrics_label(shell: TestClient) -> None:
    shell.get("/scanner/probe-7f1a/.env")
    text = _scrape(shell)
    assert "probe-7f1a" not in text
    assert 'route="unmatched",status="404"' in text


def test_made_up_http_methods_share_one_metrics_label(shell: TestClient) -> None:
    for n in range(3):
        shell.request(f"PROBE{n}X", "/healthz")
    text = _scrape(shell)
    assert "PROBE0X" not in text
    assert 'method="other",route="/healthz"' in text


def test_each_request_is_counted_and_timed_once_under_its_labels(shell: TestClient) -> None:
    def counts() -> list[float]:
        route = "/status/{code:int}"
        found = [
            REGISTRY.get_sample_value(
                "carebridge_http_requests_total",
                {"method": method, "route": route, "status": status},
            )
            for method, status in (("GET", "201"), ("GET", "202"), ("other", "201"))
        ]
        timed = REGISTRY.get_sample_value(
            "carebridge_http_request_duration_seconds_count", {"method": "GET", "route": route}
        )
        return [value or 0.0 for value in (*found, timed)]

    before = counts()
    shell.get("/status/201")
    shell.get("/status/201")
    shell.get("/status/202")
    shell.request("PROBE", "/status/201")  # 405: its own status, its own method label
    after = counts()
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 0, 3]


def test_metrics_are_open_without_a_token(shell: TestClient) -> None:
    assert "carebridge_http_requests_total" in _scrape(shell)


def test_production_app_without_a_metrics_token_serves_no_metrics(make_client: MakeClient) -> None:
    # Production refuses to start without a token (tests/carebridge/test_settings.py); an app made
    # anyway does not fall back to a public /metrics.
    client = make_client(env="production", issuer="https://id.example.org")
    response = client.get("/metrics")
    assert response.status_code == 403
    assert "carebridge_http_requests_total" not in response.text


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-token", "Basic bWV0cmljczp0b2tlbg==", "metrics-token"],
    ids=["none", "empty", "scheme only", "wrong token", "basic", "token without scheme"],
)
def test_metrics_token_is_required_when_configured(
    make_client: MakeClient, authorization: str | None
) -> None:
    client = make_client(metrics_token="metrics-token")
    headers = {} if authorization is None else {"authorization": authorization}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert "carebridge_http_requests_total" not in response.text
    assert "metrics-token" not in response.text


def test_metrics_refusal_names_the_bearer_scheme(make_client: MakeClient) -> None:
    response = make_client(metrics_token="metrics-token").get("/metrics")
    assert response.headers["www-authenticate"] == "Bearer"


def test_metrics_token_is_compared_in_constant_time(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = secrets.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    # The endpoint looks compare_digest up on the secrets module at each request.
    monkeypatch.setattr(secrets, "compare_digest", spy)
    client = make_client(metrics_token="metrics-token")
    assert "carebridge_http_requests_total" in _scrape(client, authorization="Bearer metrics-token")
    assert compared == [(b"Bearer metrics-token", b"Bearer metrics-token")]


def test_readiness_is_checked_at_most_once_a_second(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from carebridge.http import health  # noqa: PLC0415

    calls: list[int] = []
    real = health.readiness

    def counting(runtime: Runtime) -> dict[str, str]:
        calls.append(1)
        return real(runtime)

    monkeypatch.setattr(health, "readiness", counting)
    for _ in range(5):
        assert client.get("/readyz").status_code == 200
    assert len(calls) == 1
    monkeypatch.setattr(health, "FRESH_FOR", 0.0)
    assert client.get("/readyz").status_code == 200
    assert len(calls) == 2
