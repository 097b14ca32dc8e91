"""The OpenAPI document for the JSON API, served at /api/openapi.json, built from models.

An endpoint describes itself with :func:`operation`: its request body and query as
pydantic models, its success answers (:class:`Json`, :class:`Binary`, :class:`Empty`),
who may call it (:func:`session`, :func:`access_token`) and the problems it can answer
beyond those that follow from the rest. Its docstring gives the summary (first
paragraph) and the description (the rest); no YAML. Schemas come from pydantic
(``model_json_schema`` with references into ``components/schemas``), and the problem
answers (RFC 9457, :data:`PROBLEMS`) are written once in ``components/responses`` and
referenced by every operation that can give them:

- a security requirement: 401 (no valid credentials); an access token's scope: 403;
- a body: 400 (not valid), 413 (too large), 415 (another content type);
- any parameter: 400 (the input boundary refuses control characters in every one);

and those named in ``problems`` (404, 409, 422, 429...).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge.http import routing

REF = "#/components/schemas/{model}"
PROBLEM_JSON = "application/problem+json"
M = TypeVar("M", bound=type[BaseModel])
E = TypeVar("E", bound=Callable[..., Any])

PROBLEM_SCHEMA: dict[str, Any] = {
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

# The shared problem answers, by status: their component name and what they mean.
PROBLEMS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request is not valid: a parameter or the body (per field)"),
    401: ("Unauthorized", "No valid credentials (see WWW-Authenticate)"),
    403: ("Forbidden", "The credentials may not do this (a scope or a role is missing)"),
    404: ("NotFound", "No such resource for this caller, whether it exists or not"),
    409: ("Conflict", "The resource's state does not allow this now"),
    410: ("Gone", "The resource passed its retention period and was deleted"),
    413: ("ContentTooLarge", "The request body is over the limit"),
    415: ("UnsupportedMediaType", "The body is not of a content type this operation takes"),
    422: ("UnprocessableContent", "The body is well formed but names something unknown"),
    429: ("TooManyRequests", "Too many attempts; wait (see Retry-After) and try again"),
}


@dataclass(frozen=True)
class Json:
    """A JSON answer shaped like ``model``."""

    model: type[BaseModel]
    description: str


@dataclass(frozen=True)
class Binary:
    """An answer (or body) of bytes, in one of ``media_types``."""

    media_types: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class Empty:
    """An answer without a body (204)."""

    description: str


Answer = Json | Binary | Empty


@dataclass(frozen=True)
class Operation:
    summary: str
    description: str
    answers: Mapping[int, Answer]
    security: list[dict[str, list[str]]] | None = None
    body: type[BaseModel] | Binary | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    path: Mapping[str, str] = field(default_factory=dict)
    problems: frozenset[int] = frozenset()
    tags: tuple[str, ...] = ()


# Each endpoint's operations by HTTP method ("" for every method of its route).
_OPERATIONS: dict[Callable[..., Any], dict[str, Operation]] = {}
_COMPONENTS: dict[str, type[BaseModel]] = {}


def session() -> list[dict[str, list[str]]]:
    """The caller shows a session token (POST /api/v1/signin)."""
    return [{"session": []}]


def access_token(*scopes: str) -> list[dict[str, list[str]]]:
    """The caller shows an access token from the OpenID Connect provider with ``scopes``."""
    return [{"accessToken": list(scopes)}]


def component(model: M) -> M:
    """List a model in ``components/schemas`` even if no operation names it (the models
    operations name, and those nested in them, are listed without this)."""
    _COMPONENTS[model.__name__] = model
    return model


def operation(
    *,
    answers: Mapping[int, Answer],
    security: list[dict[str, list[str]]] | None = None,
    body: type[BaseModel] | Binary | None = None,
    body_required: bool = True,
    query: type[BaseModel] | None = None,
    path: Mapping[str, str] | None = None,
    problems: Iterable[int] = (),
    tags: Iterable[str] = (),
    method: str = "",
) -> Callable[[E], E]:
    """Describe the endpoint below (for ``method`` only, when one endpoint serves
    several); its docstring is the summary and description."""

    def describe(endpoint: E) -> E:
        summary, description = _docstring(endpoint)
        unknown = set(problems) - set(PROBLEMS)
        if unknown:
            raise ValueError(f"{endpoint.__qualname__}: no shared problem for {unknown}")
        _OPERATIONS.setdefault(endpoint, {})[method.lower()] = Operation(
            summary=summary,
            description=description,
            answers=dict(answers),
            security=security,
            body=body,
            body_required=body_required,
            query=query,
            path=dict(path or {}),
            problems=frozenset(problems),
            tags=tuple(tags),
        )
        return endpoint

    return describe


def _docstring(endpoint: Callable[..., Any]) -> tuple[str, str]:
    text = inspect.cleandoc(endpoint.__doc__ or "")
    summary, _, description = text.partition("\n\n")
    return " ".join(summary.split()), description.strip()


def implied_problems(op: Operation, has_parameters: bool) -> set[int]:
    """The problems an operation can answer from what it takes, besides those it names."""
    implied = set(op.problems)
    if op.security:
        implied.add(401)
        if any(scopes for requirement in op.security for scopes in requirement.values()):
            implied.add(403)
    if op.body is not None:
        implied |= {400, 413, 415}
    if has_parameters or op.query is not None:
        implied.add(400)
    return implied


class _Schemas:
    """The schemas the operations reference, gathered as the document is built."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}

    def ref(self, model: type[BaseModel], mode: str = "serialization") -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
        self.schemas.update(schema.pop("$defs", {}))
        self.schemas[model.__name__] = schema
        return {"$ref": REF.format(model=model.__name__)}


def _answer(schemas: _Schemas, answer: Answer) -> dict[str, Any]:
    if isinstance(answer, Json):
        content = {"application/json": {"schema": schemas.ref(answer.model)}}
        return {"description": answer.description, "content": content}
    if isinstance(answer, Binary):
        binary = {"schema": {"type": "string", "format": "binary"}}
        return {
            "description": answer.description,
            "content": dict.fromkeys(answer.media_types, binary),
        }
    return {"description": answer.description}


def _parameters(schemas: _Schemas, op: Operation, route: Route) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            **({"description": op.path[name]} if name in op.path else {}),
        }
        for name in re.findall(r"{(\w+)(?::\w+)?}", route.path)
    ]
    if op.query is not None:
        schema = op.query.model_json_schema(ref_template=REF)
        schemas.schemas.update(schema.pop("$defs", {}))
        required = set(schema.get("required", []))
        for name, field_schema in schema.get("properties", {}).items():
            description = field_schema.pop("description", None)
            field_schema.pop("title", None)
            prop = _absent_not_null(field_schema)
            parameters.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in required,
                    "schema": prop,
                    **({"description": description} if description else {}),
                }
            )
    return parameters


def _absent_not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without the ``null`` of an optional field's type: a
    parameter left out is absent, never null (and an empty value is not null either)."""
    choices = schema.get("anyOf")
    if isinstance(choices, list):
        kept = [choice for choice in choices if choice != {"type": "null"}]
        if len(kept) == 1:
            rest = {key: value for key, value in schema.items() if key != "anyOf"}
            return {**kept[0], **rest}
    return schema


def _operation(schemas: _Schemas, op: Operation, route: Route) -> dict[str, Any]:
    result: dict[str, Any] = {"summary": op.summary}
    if op.description:
        result["description"] = op.description
    if op.tags:
        result["tags"] = list(op.tags)
    if op.security:
        result["security"] = op.security
    parameters = _parameters(schemas, op, route)
    if parameters:
        result["parameters"] = parameters
    if isinstance(op.body, Binary):
        binary = {"schema": {"type": "string", "format": "binary"}}
        result["requestBody"] = {
            "required": op.body_required,
            "description": op.body.description,
            "content": dict.fromkeys(op.body.media_types, binary),
        }
    elif op.body is not None:
        result["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": schemas.ref(op.body, "validation")}},
        }
    responses: dict[str, Any] = {
        str(status): _answer(schemas, answer) for status, answer in sorted(op.answers.items())
    }
    for status in sorted(implied_problems(op, bool(parameters))):
        responses[str(status)] = {"$ref": f"#/components/responses/{PROBLEMS[status][0]}"}
    result["responses"] = responses
    return result


def _problem_responses() -> dict[str, Any]:
    content = {PROBLEM_JSON: {"schema": {"$ref": REF.format(model="Problem")}}}
    return {
        name: {
            "description": f"{status} {HTTPStatus(status).phrase}: {meaning}",
            "content": content,
        }
        for status, (name, meaning) in PROBLEMS.items()
    }


def operations(routes: Iterable[BaseRoute]) -> Iterable[tuple[Route, str, Operation]]:
    """Each API route's described operations, by method (lower case)."""
    for route in routing.flatten(routes):
        if not isinstance(route, Route) or not route.path.startswith("/api/"):
            continue
        described = _OPERATIONS.get(route.endpoint, {})
        for method in sorted((route.methods or set()) - {"HEAD"}):
            op = described.get(method.lower()) or described.get("")
            if op is not None:
                yield route, method.lower(), op


def document(routes: Iterable[BaseRoute], version: str, issuer: str) -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route, method, op in operations(routes):
        path = re.sub(r"{(\w+):\w+}", r"{\1}", route.path)
        paths.setdefault(path, {})[method] = _operation(schemas, op, route)
    for model in _COMPONENTS.values():
        schemas.ref(model)
    return {
        "openapi": "3.1.0",
        "info": {"title": "carebridge API", "version": version},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.schemas.items())),
            "responses": _problem_responses(),
            "securitySchemes": {
                "session": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The session token from POST /api/v1/signin",
                },
                "accessToken": {
                    # An RFC 9068 JWT from this issuer's token endpoint (docs/oidc.md);
                    # OpenAPI 3.1 wants the discovery document's absolute URL.
                    "type": "openIdConnect",
                    "openIdConnectUrl": f"{issuer.rstrip('/')}/.well-known/openid-configuration",
                    "description": "An access token (JWT) from the OpenID Connect provider",
                },
            },
        },
    }


async def openapi(request: Request) -> Response:
    from importlib.metadata import version  # noqa: PLC0415  (only when asked for)

    issuer = request.app.state.runtime.settings.issuer
    return JSONResponse(document(request.app.routes, version("carebridge"), issuer))
