"""The route index (cnop.common.web.routing.RouteIndex) picks the route FastAPI's scan picks.

The answers themselves are the API suites' business (every request of tests/api goes through the
index); here: for every path of every route of the app, spelled as routes spell it and a few ways
around it, with every method, the index either leaves the request to the scan or picks the very
route (and path parameters) the scan's first full match is.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Match, Route
from starlette.testclient import TestClient

from cnop.common.web.routing import RouteIndex, install_route_index
from cnop.gateway.app import create_app
from tests.support.api import make_settings

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _scan(routes: list[Any], scope: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
    for route in routes:
        match, child = route.matches(scope)
        if match == Match.FULL:
            return route, child
    return None


def _scope(path: str, method: str, root_path: str = "") -> dict[str, Any]:
    return {"type": "http", "path": path, "root_path": root_path, "method": method, "headers": [], "query_string": b""}


def _paths(app: FastAPI) -> set[str]:
    paths: set[str] = set()
    for route in app.router.routes:
        path = getattr(route, "path", "")
        filled = path.replace("{", "").replace("}", "")
        paths |= {path, filled, path + "/", path.rstrip("/") or "/", path + "/x", "/nope" + path}
    return paths | {"/", "", "/alpaca", "/alpaca/", "/alpaca/v2/account"}


def test_the_index_picks_what_the_scan_picks_for_every_path_and_method() -> None:
    app = create_app(make_settings())
    index = app.router.middleware_stack
    assert isinstance(index, RouteIndex)
    answered = 0
    for path in sorted(_paths(app)):
        for method in METHODS:
            for root_path in ("", "/prefix"):
                scope = _scope(path, method, root_path)
                found = index.find(dict(scope))
                if found is None:
                    continue
                answered += 1
                assert found == _scan(app.router.routes, dict(scope)), (method, path)
    assert answered > 50  # the index answers the fixed paths: most of the API


def test_the_hot_reads_are_found_by_the_index() -> None:
    app = create_app(make_settings())
    index = app.router.middleware_stack
    assert isinstance(index, RouteIndex)
    for path in ("/health", "/api/v1/auth/profile", "/api/v1/inventory/assets", "/api/v1/balance", "/api/v1/portfolio"):
        found = index.find(_scope(path, "GET"))
        assert found is not None and found[0].path == path


async def _ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def test_a_route_the_index_cannot_judge_ends_it_and_a_changed_route_list_rebuilds_it() -> None:
    app = FastAPI()
    app.router.routes.append(Route("/a", _ok, methods=["GET"]))
    app.router.routes.append(Host("example.com", app=_ok))
    app.router.routes.append(Route("/b", _ok, methods=["GET"]))
    assert install_route_index(app)
    index = app.router.middleware_stack
    assert isinstance(index, RouteIndex)
    assert index.find(_scope("/a", "GET")) is not None
    assert index.find(_scope("/b", "GET")) is None  # the host route comes first: the scan decides
    assert index.find(_scope("/a", "POST")) is None  # 405 is the scan's
    app.router.routes.insert(0, Route("/{anything}", _ok, methods=["GET"]))
    found = index.find(_scope("/a", "GET"))
    assert found is not None and found[0].path == "/{anything}"
    assert found == _scan(app.router.routes, _scope("/a", "GET"))


def test_no_index_over_a_router_with_its_own_middleware() -> None:
    app = FastAPI()
    app.router.middleware_stack = PlainTextResponse("x")  # type: ignore[assignment]
    assert not install_route_index(app)


def test_the_index_answers_through_the_app() -> None:
    app = create_app(make_settings())
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/nope").status_code == 404
        wrong = client.delete("/health")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
