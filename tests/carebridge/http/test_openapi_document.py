"""The served OpenAPI document hangs together: it is valid OpenAPI 3.1, every reference and
scheme resolves, and the problem answers are the shared ones, listed wherever they can
happen (tests/carebridge/http/test_schemathesis.py holds the live API to it)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from starlette.testclient import TestClient

PROBLEM_NAMES = {
    "400": "BadRequest",
    "401": "Unauthorized",
    "403": "Forbidden",
    "404": "NotFound",
    "409": "Conflict",
    "413": "ContentTooLarge",
    "415": "UnsupportedMediaType",
    "422": "UnprocessableContent",
    "429": "TooManyRequests",
}


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    served: dict[str, Any] = response.json()
    return served


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    # Schemathesis checks it against the OpenAPI 3.1 meta-schema (raises if not valid).
    schemathesis.openapi.from_dict(document).validate()


def test_every_ref_and_security_scheme_is_defined(document: dict[str, Any]) -> None:
    refs = {node["$ref"] for node in _walk(document) if isinstance(node.get("$ref"), str)}
    for ref in refs:
        _resolve(document, ref)  # KeyError names the missing part
    schemes = set(document["components"]["securitySchemes"])
    used = {
        name
        for _, _, operation in _operations(document)
        for requirement in operation.get("security", [])
        for name in requirement
    }
    assert used and used <= schemes, used - schemes


def test_every_operation_sits_under_an_http_method(document: dict[str, Any]) -> None:
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    for path, item in document["paths"].items():
        assert set(item) <= methods, path
        for operation in item.values():
            assert "responses" in operation, path
            assert operation["summary"], path


def test_problem_answers_are_written_once_and_referenced(document: dict[str, Any]) -> None:
    shared = document["components"]["responses"]
    for status, name in PROBLEM_NAMES.items():
        content = shared[name]["content"]["application/problem+json"]
        assert content["schema"] == {"$ref": "#/components/schemas/Problem"}, status
    for method, path, operation in _operations(document):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert set(response) == {"$ref"}, (method, path, status)
                assert response["$ref"].startswith("#/components/responses/"), (method, path)


def test_every_operation_lists_the_problems_its_inputs_can_cause(
    document: dict[str, Any],
) -> None:
    # The fuzzer's findings before the document was generated: a request without
    # credentials answers 401, a body of another content type 415, a body over the
    # limit 413, a malformed parameter 400, whatever the operation.
    for method, path, operation in _operations(document):
        listed = set(operation["responses"])
        if operation.get("security"):
            assert "401" in listed, (method, path)
        if "requestBody" in operation:
            assert {"400", "413", "415"} <= listed, (method, path)
        if operation.get("parameters"):
            assert "400" in listed, (method, path)


def test_docstrings_give_summary_and_description_without_yaml(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        text = operation["summary"] + operation.get("description", "")
        assert "---" not in text and "responses:" not in text, (method, path)
