"""Routes grouped by literal path prefix, so finding one is not a scan of them all.

Starlette's router tries each route's path regex in turn. With a hundred routes, finding
one near the end of the list (the messaging API) cost ~50 µs of every request.
:func:`grouped` arranges the app's routes into a tree of :class:`RouteGroup` by literal
path segments (:func:`tree` puts a root group on top), and a group tries only the routes
whose next literal segment is the path's (and those with a parameter there): a request
is matched in a few dictionary lookups and the regexes of one small group. The router still sees
the matched route (``scope["route"]``: metrics are labelled by its path template), the
same FULL / PARTIAL (405) answers and the same first-match order, and ``url_for`` finds
routes by name as before.

Why not Starlette's own ``Mount`` per prefix: a whole request costs 25-33% more CPU with
it on a page or an unmatched path (Starlette tries each top-level entry's regex in turn;
bench/route_tree.py, figures in docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, Mount, NoMatchFound, Route
from starlette.types import Receive, Scope, Send

# Groups smaller than this are not worth a level of their own.
_MIN_GROUP = 4


class RouteGroup(BaseRoute):
    """Routes whose paths are ``prefix`` or lie under ``prefix + "/"``."""

    def __init__(self, prefix: str, routes: Sequence[BaseRoute]) -> None:
        outside = [p for p in map(_path, routes) if not _under(p, prefix)]
        if outside:
            raise ValueError(f"route {outside[0]} is not under {prefix}")
        self.prefix = prefix
        self.path = prefix  # for tools that print routes
        self.routes = list(routes)
        # Which routes can match, by the path's next segment under the prefix: those
        # whose own next segment is that literal, and those whose next segment is not a
        # literal (a parameter, or the prefix itself), kept in their order. A route with
        # another literal there cannot match, so leaving it out changes no answer.
        keys = [_next_segment(_path(route), prefix) for route in self.routes]
        self._anywhere = [r for r, key in zip(self.routes, keys, strict=True) if key is None]
        self._by_segment = {
            key: [r for r, k in zip(self.routes, keys, strict=True) if k in (key, None)]
            for key in keys
            if key is not None
        }

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = route_path(scope)
        # Websocket routes match websocket scopes themselves; lifespan never gets here.
        if scope["type"] not in ("http", "websocket") or not _under(path, self.prefix):
            return Match.NONE, {}
        segment = _next_segment(path, self.prefix)
        candidates = self._anywhere if segment is None else self._by_segment.get(segment)
        partial: tuple[BaseRoute, Scope] | None = None
        for route in candidates if candidates is not None else self._anywhere:
            match, child_scope = route.matches(scope)
            # A nested group already named the route it found.
            if match is Match.FULL:
                return Match.FULL, {"route": route, **child_scope}
            if match is Match.PARTIAL and partial is None:
                partial = (route, child_scope)
        if partial is not None:
            return Match.PARTIAL, {"route": partial[0], **partial[1]}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # matches() put the route it found in the scope.
        route: BaseRoute = scope["route"]
        await route.handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        for route in self.routes:
            try:
                return route.url_path_for(name, **path_params)
            except NoMatchFound:
                pass
        raise NoMatchFound(name, path_params)


def route_path(scope: Scope) -> str:
    """The request's path under the app's root path, as Starlette's own routes match it
    (a mount moves ``root_path`` along; the path itself stays whole)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


def _path(route: BaseRoute) -> str:
    if isinstance(route, RouteGroup):
        return route.prefix
    return str(getattr(route, "path", ""))


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _next_segment(path: str, prefix: str) -> str | None:
    """The literal segment of ``path`` right under ``prefix``; None for the prefix itself,
    a parameter, or a route without a path under it."""
    if not path.startswith(prefix + "/"):
        return None
    segment = path[len(prefix) + 1 :].split("/", 1)[0]
    return None if "{" in segment else segment


def _segment(path: str, depth: int) -> str | None:
    """The literal prefix of ``path`` through its ``depth``-th segment, or None."""
    parts = path.split("/")
    if len(parts) <= depth or any("{" in part for part in parts[1 : depth + 1]):
        return None
    return "/".join(parts[: depth + 1])


def grouped(routes: Iterable[BaseRoute], depth: int = 1, parent: str = "") -> list[BaseRoute]:
    """``routes`` arranged in groups by their literal path segments, recursively.

    Routes whose paths differ in their first ``depth`` segments can never match the same
    path, so gathering them by that prefix changes no answer; within a group the order
    is kept. A level is left as it is when a route there has a parameter at that depth
    (``/api/{x}``, which could match what its neighbours match: order matters) or is of
    a kind without a path.
    """
    routes = list(routes)
    keys: list[str | None] = []
    for route in routes:
        if not isinstance(route, Route | Mount | RouteGroup):
            return routes
        path = _path(route)
        if path == parent:
            keys.append(None)  # the group's own path: it matches nothing deeper
            continue
        key = _segment(path, depth)
        if key is None:
            return routes
        keys.append(key)
    members: dict[str, list[BaseRoute]] = {}
    order: list[BaseRoute | str] = []
    for route, key in zip(routes, keys, strict=True):
        if key is None:
            order.append(route)
        else:
            if key not in members:
                members[key] = []
                order.append(key)
            members[key].append(route)
    result: list[BaseRoute] = []
    for entry in order:
        if not isinstance(entry, str):
            result.append(entry)
        elif len(members[entry]) >= _MIN_GROUP:
            result.append(RouteGroup(entry, grouped(members[entry], depth + 1, entry)))
        else:
            result.extend(members[entry])
    return result


def tree(routes: Iterable[BaseRoute]) -> list[BaseRoute]:
    """``routes`` grouped (:func:`grouped`) under one root group: even the top level is
    found by the path's first segment instead of by trying each route in turn."""
    return [RouteGroup("", grouped(routes))]


def flatten(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, groups opened (for the OpenAPI generator, which knows only Starlette's
    own route classes)."""
    for route in routes:
        if isinstance(route, RouteGroup):
            yield from flatten(route.routes)
        else:
            yield route
