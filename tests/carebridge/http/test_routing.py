"""carebridge.http.routing: routes grouped by path prefix answer exactly as before."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.testclient import TestClient
from starlette.types import Scope

from carebridge.http.routing import RouteGroup, flatten, grouped, tree


async def echo(request: Request) -> Response:
    route = request.scope["route"]
    return JSONResponse({"route": route.path, "params": request.path_params})


def flat_routes() -> list[BaseRoute]:
    return [
        Route("/", echo),
        Route("/api/things/{thing_id}", echo, methods=["GET"], name="thing"),
        Route("/other", echo),
        Route("/api/things/{thing_id}/parts", echo, methods=["POST"]),
        Route("/api/things", echo, methods=["GET"]),
        Route("/api/things-list", echo),
        Route("/api/people/{person_id}", echo, methods=["GET", "DELETE"]),
        Route("/api/things/{thing_id}", echo, methods=["DELETE"], name="thing-delete"),
    ]


REQUESTS = [
    ("GET", "/"),
    ("GET", "/api/things/t1"),
    ("DELETE", "/api/things/t1"),
    ("POST", "/api/things/t1/parts"),
    ("GET", "/api/things/t1/parts"),  # 405
    ("PUT", "/api/things/t1"),  # 405
    ("GET", "/api/things"),
    ("GET", "/api/things-list"),
    ("DELETE", "/api/people/p1"),
    ("GET", "/api/nothing/here"),  # 404
    ("GET", "/other"),
    ("GET", "/api/things/t1/"),  # redirected to the slashless path
    ("GET", "/api"),  # 404: a prefix, not a route
    ("GET", "/api/things-list/"),  # redirected
    ("GET", "/api/{thing_id}"),  # 404: braces in a path are not a parameter
]


def answers(routes: list[BaseRoute]) -> list[tuple[int, str]]:
    client = TestClient(Starlette(routes=routes))
    return [(r.status_code, r.text) for r in (client.request(m, p) for m, p in REQUESTS)]


def test_grouped_routes_give_the_same_answer_to_every_request() -> None:
    routes = grouped(flat_routes())
    assert any(isinstance(route, RouteGroup) for route in routes)
    assert answers(routes) == answers(flat_routes())
    assert answers(routes)[1] == (
        200,
        '{"route":"/api/things/{thing_id}","params":{"thing_id":"t1"}}',
    )


def test_the_tree_gives_the_same_answers_and_tries_only_the_routes_that_could_match() -> None:
    routes = tree(flat_routes())
    assert answers(routes) == answers(flat_routes())
    (root,) = routes
    assert isinstance(root, RouteGroup)
    tried: list[str] = []
    for route in flatten(routes):
        assert isinstance(route, Route)
        original = route.matches

        def spy(scope: Scope, route: Route = route, original: Any = original) -> Any:
            tried.append(route.path)
            return original(scope)

        route.matches = spy  # type: ignore[method-assign]
    client = TestClient(Starlette(routes=routes))
    assert client.delete("/api/people/p1").status_code == 200
    # The one route under /api/people; none of /api/things's, nor / or /other.
    assert tried == ["/api/people/{person_id}"]


def test_urls_are_built_by_name_and_groups_open_for_the_schema() -> None:
    application = Starlette(routes=grouped(flat_routes()))
    assert application.url_path_for("thing-delete", thing_id="t9") == "/api/things/t9"
    paths = sorted(str(getattr(route, "path", "")) for route in flatten(application.routes))
    assert paths == sorted(str(getattr(route, "path", "")) for route in flat_routes())


def test_a_level_with_a_parameter_keeps_its_order() -> None:
    # "/api/{kind}" could match what "/api/things" matches: the first one wins, as listed.
    routes = [
        Route("/api/{kind}", echo),
        Route("/api/things", echo),
        Route("/api/a", echo),
        Route("/api/b", echo),
        Route("/api/c", echo),
    ]
    (group,) = grouped(routes)
    assert isinstance(group, RouteGroup)
    assert [getattr(route, "path", "") for route in group.routes] == [r.path for r in routes]
    assert TestClient(Starlette(routes=[group])).get("/api/things").json()["route"] == "/api/{kind}"


def test_a_route_outside_the_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="not under"):
        RouteGroup("/api/things", [Route("/api/other", echo)])


def test_under_a_root_path_the_tree_matches_as_starlette_does() -> None:
    # RouteGroup reads the path under root_path the way Starlette's routes do.
    def under_root(routes: list[BaseRoute]) -> list[tuple[int, str]]:
        client = TestClient(Starlette(routes=routes), root_path="/base")
        return [(r.status_code, r.text) for r in (client.request(m, p) for m, p in REQUESTS)]

    assert under_root(tree(flat_routes())) == under_root(flat_routes())
    assert under_root(tree(flat_routes()))[1][0] == 200
