"""The OpenAPI document for the JSON API, served at /api/openapi.json.

Each API endpoint describes itself in its docstring after a ``---`` line (YAML, read by
Starlette's SchemaGenerator); request and response bodies are pydantic models registered
with :func:`component` and referenced as ``$ref: '#/components/schemas/<Name>'``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.schemas import SchemaGenerator

from carebridge.http import routing

M = TypeVar("M", bound=type[BaseModel])
_COMPONENTS: dict[str, type[BaseModel]] = {}

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "required": ["type", "title", "status"],
}


def component(model: M) -> M:
    """Register a request or response model under its class name."""
    _COMPONENTS[model.__name__] = model
    return model


def _unwrapped(method: str, operation: Any) -> Any:
    """A docstring may name its method again (``get:`` then the operation); Starlette's
    generator already keys operations by method, so the inner mapping is the operation."""
    if isinstance(operation, dict) and set(operation) == {method}:
        return operation[method]
    return operation


def document(routes: list[Any], version: str) -> dict[str, Any]:
    generator = SchemaGenerator(
        {"openapi": "3.1.0", "info": {"title": "carebridge API", "version": version}}
    )
    schema: dict[str, Any] = generator.get_schema(routes=list(routing.flatten(routes)))
    schema["paths"] = {
        path: {method: _unwrapped(method, operation) for method, operation in item.items()}
        for path, item in schema.get("paths", {}).items()
        if path.startswith("/api/")
    }
    schemas: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    for name, model in sorted(_COMPONENTS.items()):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(model_schema.pop("$defs", {}))
        schemas[name] = model_schema
    schema["components"] = {
        "schemas": schemas,
        "securitySchemes": {
            "session": {
                "type": "http",
                "scheme": "bearer",
                "description": "The session token from POST /api/v1/signin",
            },
            "accessToken": {
                # An RFC 9068 JWT from this issuer's token endpoint (docs/oidc.md).
                "type": "openIdConnect",
                "openIdConnectUrl": "/.well-known/openid-configuration",
                "description": "An access token (JWT) from the OpenID Connect provider",
            },
        },
    }
    return schema


async def openapi(request: Request) -> Response:
    from importlib.metadata import version  # noqa: PLC0415  (only when asked for)

    return JSONResponse(document(request.app.routes, version("carebridge")))
