"""The lean route path (cnop.common.web.routing): which routes take it, and that it answers as FastAPI.

The answers of every route, refusals included, are the API suites' business (tests/api, the
OpenAPI fuzz); here: the hot routes are lean, the plan holds only what it can, and a request it
cannot answer is answered by FastAPI's handler exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import httpx2 as httpx
import pytest
from fastapi import Depends, FastAPI, Header, Query
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cnop.common.web.routing import COMPONENT_ATTRIBUTE, ExactJSONRoute, LeanRoute, lean_routes
from cnop.gateway.app import create_app
from tests.support.api import make_settings

HOT = [
    ("POST", "/api/v1/orders"),
    ("GET", "/api/v1/orders"),
    ("DELETE", "/api/v1/orders/{order_id}"),
    ("GET", "/api/v1/auth/profile"),
    ("GET", "/api/v1/balance"),
    ("GET", "/api/v1/portfolio"),
    ("GET", "/api/v1/inventory/assets"),
    ("GET", "/health"),
]


def test_the_hot_routes_take_the_lean_path_and_fastapis_own_routes_come_last() -> None:
    app = create_app(make_settings())
    lean = {
        (method, route.path) for route in app.router.routes if getattr(route, "lean", False) for method in route.methods
    }
    assert set(HOT) <= lean
    paths = [getattr(route, "path", None) for route in app.router.routes]
    assert paths[-3:] == ["/api/v1/openapi.json", "/docs", "/docs/oauth2-redirect"]
    assert set(lean_routes(app.router.routes)) >= {path for _, path in HOT}


class Body(BaseModel):
    n: int


calls: list[str] = []


async def get_thing(request: Request) -> str:
    calls.append("thing")
    return str(request.app.state.container.thing)


setattr(get_thing, COMPONENT_ATTRIBUTE, "thing")


async def counted(request: Request) -> str:
    calls.append("counted")
    return "counted"


def sync_dependency() -> str:
    return "sync"


def build(route_class: type[LeanRoute]) -> FastAPI:
    app = FastAPI()

    class Container:
        thing = "from the container"

    app.state.container = Container()

    async def both(
        body: Body,
        a: Annotated[str, Depends(counted)],
        b: Annotated[str, Depends(counted)],
        thing: Annotated[str, Depends(get_thing)],
        limit: Annotated[int, Query(ge=1, le=10)] = 5,
        key: Annotated[str | None, Header(alias="X-Key")] = None,
    ) -> Response:
        return JSONResponse({"n": body.n, "a": a, "b": b, "thing": thing, "limit": limit, "key": key})

    async def sync_dep(value: Annotated[str, Depends(sync_dependency)]) -> Response:
        return JSONResponse({"value": value})

    async def returns_data() -> dict[str, Any]:
        return {"data": 1}

    app.router.routes.append(route_class("/both", both, methods=["POST"], dependency_overrides_provider=app))
    app.router.routes.append(route_class("/sync", sync_dep, methods=["GET"]))
    app.router.routes.append(route_class("/data", returns_data, methods=["GET"]))
    return app


@pytest.fixture(autouse=True)
def clear_calls() -> Iterator[None]:
    calls.clear()
    yield
    calls.clear()


def test_only_plans_it_can_hold_are_lean() -> None:
    app = build(ExactJSONRoute)
    lean = dict((route.path, route.lean) for route in app.router.routes if isinstance(route, LeanRoute))
    assert lean == {"/both": True, "/sync": False, "/data": False}


@pytest.mark.parametrize("route_class", [ExactJSONRoute, LeanRoute])
async def test_lean_answers_are_fastapis(route_class: type[LeanRoute]) -> None:
    lean, plain = build(route_class), build(route_class)
    for route in plain.router.routes:
        if isinstance(route, LeanRoute) and route.lean:
            route.app = route._full_handler_app  # FastAPI's handler only
    requests: list[dict[str, Any]] = [
        {"json": {"n": 1}, "headers": {"X-Key": "k"}, "params": {"limit": "3"}},
        {"json": {"n": 1}},
        {"json": {"n": "x"}},  # body refused
        {"json": {"n": 1}, "params": {"limit": "99"}},  # query refused
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        {"content": b'{"n": 1}', "headers": {"content-type": "text/plain"}},
        {"content": b'{"n": 1}'},  # no content type
        {"content": b""},
        {"content": b'{"n": 1, "n": 2}', "headers": {"content-type": "application/json"}},
    ]
    for kwargs in requests:
        answers = []
        for app in (lean, plain):
            calls.clear()
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                r = await client.post("/both", **kwargs)
            answers.append((r.status_code, r.json(), calls.count("counted"), "thing" in calls))
        assert answers[0][:2] == answers[1][:2], kwargs
        if answers[0][0] == 200:
            assert answers[0][1]["thing"] == "from the container"
            assert answers[0][2] == 1  # one call per request for both parameters (FastAPI's cache)
            assert not answers[0][3]  # the component was read off the app, not called


async def test_dependency_overrides_go_to_fastapi() -> None:
    app = build(ExactJSONRoute)

    async def other(request: Request) -> str:
        return "overridden"

    app.dependency_overrides[counted] = other
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.post("/both", json={"n": 1})
    assert r.status_code == 200 and r.json()["a"] == "overridden"


# --- parameters read once-compiled, as FastAPI reads them ----------------------------------------


def _all_params(plan: Any) -> Iterator[Any]:
    for kind in (plan.path_params, plan.query_params, plan.header_params):
        if kind:
            yield kind
    for sub in plan.subs:
        yield from _all_params(sub)


SAMPLES = ["", "1", "0", "-1", "50", "101", "abc", "BTC", "btc", "ORD_01HZX", "x" * 3000, "true", "é", "1.5"]


def test_compiled_parameters_read_what_fastapi_reads() -> None:
    from fastapi.dependencies.utils import request_params_to_args
    from starlette.datastructures import Headers, QueryParams

    app = create_app(make_settings())
    kinds = [
        params for route in app.router.routes if getattr(route, "_plan", None) for params in _all_params(route._plan)
    ]
    assert any(params.scalars for params in kinds)
    compared = 0
    for params in kinds:
        fields = params.fields
        keys = [key for field in fields for key in {field.alias, field.name, field.alias.replace("_", "-")}]
        for sample in SAMPLES:
            for present in range(len(keys) + 1):
                pairs = [(key, sample) for key in keys[:present]]
                for received in (
                    dict(pairs),
                    QueryParams(pairs),
                    Headers(raw=[(k.encode(), v.encode()) for k, v in pairs]),
                ):
                    expected, expected_errors = request_params_to_args(fields, received)
                    found, errors = params.read(received)
                    assert bool(errors) == bool(expected_errors)
                    if not errors:
                        assert found == expected
                    compared += 1
    assert compared > 100
