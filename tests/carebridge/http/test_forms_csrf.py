"""Reading bodies: CSRF on forms, size limits, JSON validation as problem details."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from carebridge.app import create_app
from carebridge.http import csrf
from carebridge.http.forms import MAX_BODY, read_form, read_json
from carebridge.runtime import Runtime
from carebridge.settings import Settings

posted: list[str] = []


class Greeting(BaseModel):
    name: str = Field(max_length=20)
    count: int


async def form_page(request: Request) -> Response:
    if request.method == "POST":
        form = await read_form(request)
        posted.append(str(form.get("name")))
        return Response("ok")
    return Response(f'<input name="csrf_token" value="{csrf.token(request)}">')


async def json_api(request: Request) -> Response:
    greeting = await read_json(request, Greeting)
    return JSONResponse(greeting.model_dump())


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    posted.clear()
    runtime = Runtime.build(Settings(data_dir=tmp_path))
    app = create_app(runtime)
    app.router.routes += [
        Route("/form", form_page, methods=["GET", "POST"]),
        Route("/api/v1/greet", json_api, methods=["POST"]),
    ]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    runtime.close()


def _token(client: TestClient) -> str:
    match = re.search(r'value="([^"]+)"', client.get("/form").text)
    assert match
    return match[1]


def test_form_with_its_token_is_accepted(app_client: TestClient) -> None:
    token = _token(app_client)
    assert app_client.post("/form", data={"csrf_token": token, "name": "a"}).text == "ok"
    assert posted == ["a"]


@pytest.mark.parametrize("token", [None, "", "forged-value"])
def test_form_without_a_valid_token_is_refused(app_client: TestClient, token: str | None) -> None:
    _token(app_client)
    data = {"name": "a"} | ({"csrf_token": token} if token is not None else {})
    response = app_client.post("/form", data=data, headers={"accept": "text/html"})
    assert response.status_code == 403
    assert "another site" in response.text
    assert posted == []


def test_token_from_another_browser_is_refused(app_client: TestClient, tmp_path: Path) -> None:
    token = _token(app_client)
    app_client.cookies.clear()  # the victim's browser: a different cookie, same stolen field
    app_client.get("/form")
    assert app_client.post("/form", data={"csrf_token": token, "name": "a"}).status_code == 403
    assert posted == []


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {"origin": "https://evil.example"},
        {"origin": "null"},
    ],
)
def test_cross_site_post_is_refused_even_with_a_token(
    app_client: TestClient, headers: dict[str, str]
) -> None:
    token = _token(app_client)
    response = app_client.post("/form", data={"csrf_token": token, "name": "a"}, headers=headers)
    assert response.status_code == 403
    assert posted == []


def test_same_origin_fetch_metadata_is_accepted(app_client: TestClient) -> None:
    token = _token(app_client)
    headers = {"sec-fetch-site": "same-origin", "origin": "http://127.0.0.1:8000"}
    response = app_client.post("/form", data={"csrf_token": token, "name": "a"}, headers=headers)
    assert response.status_code == 200


def test_csrf_cookie_is_http_only_and_lax(app_client: TestClient) -> None:
    cookie = app_client.get("/form").headers["set-cookie"]
    assert cookie.startswith("carebridge_csrf=")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


def test_machine_paths_get_no_cookie(app_client: TestClient) -> None:
    assert "set-cookie" not in app_client.get("/healthz").headers


def test_oversize_form_is_refused_before_parsing(app_client: TestClient) -> None:
    token = _token(app_client)
    response = app_client.post("/form", data={"csrf_token": token, "name": "a" * (MAX_BODY + 1)})
    assert response.status_code == 413
    assert posted == []


def _chunked_form(token: str, fields: int, size: int) -> Iterator[bytes]:
    yield f"csrf_token={token}&name=a".encode()
    for i in range(fields):
        yield f"&f{i}=".encode() + b"a" * size


def test_oversize_form_without_a_length_is_refused(app_client: TestClient) -> None:
    # Each field is well under the limit, together they are not; no Content-Length to check.
    token = _token(app_client)
    fields = MAX_BODY // 8192 + 2
    response = app_client.post(
        "/form",
        content=_chunked_form(token, fields, 8192),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert posted == []


def test_small_form_without_a_length_is_accepted_and_csrf_checked(app_client: TestClient) -> None:
    token = _token(app_client)
    headers = {"content-type": "application/x-www-form-urlencoded"}
    ok = app_client.post("/form", content=_chunked_form(token, 2, 100), headers=headers)
    assert ok.text == "ok"
    forged = app_client.post("/form", content=_chunked_form("forged", 2, 100), headers=headers)
    assert forged.status_code == 403
    assert posted == ["a"]


def test_json_errors_name_fields_without_echoing_values(app_client: TestClient) -> None:
    response = app_client.post(
        "/api/v1/greet", json={"name": "x" * 21 + "SECRETVALUE", "count": "many"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {error["field"] for error in body["errors"]} == {"name", "count"}
    assert "SECRETVALUE" not in response.text
    assert "many" not in response.text


def test_json_api_wants_json(app_client: TestClient) -> None:
    response = app_client.post(
        "/api/v1/greet", content=b"name=a", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415


def test_oversize_json_without_a_length_is_refused(app_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"a" * 1024
        yield b'", "count": 1}'

    response = app_client.post(
        "/api/v1/greet", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_valid_json_is_parsed(app_client: TestClient) -> None:
    response = app_client.post("/api/v1/greet", json={"name": "a", "count": 2})
    assert response.json() == {"name": "a", "count": 2}
