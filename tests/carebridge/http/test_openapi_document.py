"""The served OpenAPI document hangs together: every reference and scheme resolves."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_every_ref_and_security_scheme_is_defined(client: TestClient) -> None:
    document = client.get("/api/openapi.json").json()
    components = document["components"]
    refs = {node["$ref"] for node in _walk(document) if isinstance(node.get("$ref"), str)}
    missing = [
        ref
        for ref in refs
        if ref.removeprefix("#/components/schemas/") not in components["schemas"]
    ]
    assert missing == []
    schemes = set(components["securitySchemes"])
    used = {
        name
        for item in document["paths"].values()
        for operation in item.values()
        for requirement in operation.get("security", [])
        for name in requirement
    }
    assert used and used <= schemes, used - schemes


def test_every_operation_sits_under_an_http_method(client: TestClient) -> None:
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    paths = client.get("/api/openapi.json").json()["paths"]
    for path, item in paths.items():
        assert set(item) <= methods, path
        for operation in item.values():
            assert "responses" in operation, path
