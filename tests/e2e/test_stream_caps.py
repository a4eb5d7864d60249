"""Concurrent event streams are capped per user and per IP (edge review finding 10).

Streams need a real socket (the ASGI test client buffers whole responses), so the app is served by
uvicorn in this process on a free 127.0.0.1 port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx2 as httpx
import pytest
import uvicorn

from tests.conftest import StoreFactory
from tests.support.api import Api, open_api
from tests.support.edge_server import free_port
from tests.support.wire import read


@pytest.fixture
async def served(store_factory: StoreFactory) -> AsyncIterator[tuple[Api, str]]:
    api, lifespan = await open_api(store_factory, max_streams_per_user=2, max_streams_per_ip=3)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api.app, host="127.0.0.1", port=port, lifespan="off", log_config=None))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield api, f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, 10)
    await api.client.aclose()
    await lifespan.__aexit__(None, None, None)


async def open_stream(
    stack: contextlib.AsyncExitStack, http: httpx.AsyncClient, headers: dict[str, str]
) -> httpx.Response:
    return await stack.enter_async_context(http.stream("GET", "/api/v1/events", headers=headers))


async def wait_for_open_streams(api: Api, user: str, count: int) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while api.container.streams.open_for(user=user) != count:
        assert asyncio.get_running_loop().time() < deadline, api.container.streams.open_for(user=user)
        await asyncio.sleep(0.05)


async def test_streams_past_the_per_user_cap_are_429_and_a_closed_one_frees_its_slot(served: tuple[Api, str]) -> None:
    api, base = served
    user, headers = await api.register()
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        async with contextlib.AsyncExitStack() as stack:
            first = await open_stream(stack, http, headers)
            second = await open_stream(stack, http, headers)
            assert first.status_code == second.status_code == 200
            refused = await http.get("/api/v1/events", headers=headers)
            assert refused.status_code == 429
            assert refused.headers["content-type"].startswith("application/problem+json")
            problem = read(refused)
            assert problem["code"] == "too_many_streams" and "per user" in problem["detail"]
            assert problem["request_id"] == refused.headers["x-request-id"]
            assert int(refused.headers["retry-after"]) >= 1 and refused.headers["x-ratelimit-limit"]
            assert api.container.streams.open_for(user=user) == 2
        await wait_for_open_streams(api, user, 0)  # the server saw both disconnects
        async with http.stream("GET", "/api/v1/events", headers=headers) as again:
            assert again.status_code == 200


async def test_streams_past_the_per_ip_cap_are_429_whoever_opens_them(served: tuple[Api, str]) -> None:
    api, base = served
    users = [await api.register() for _ in range(3)]
    async with httpx.AsyncClient(base_url=base, timeout=10) as http, contextlib.AsyncExitStack() as stack:
        opened = [
            await open_stream(stack, http, users[0][1]),
            await open_stream(stack, http, users[1][1]),
            await open_stream(stack, http, users[2][1]),
        ]
        assert [r.status_code for r in opened] == [200, 200, 200]
        refused = await http.get("/api/v1/events", headers=users[2][1])
        assert refused.status_code == 429 and read(refused)["code"] == "too_many_streams"
        assert "per address" in read(refused)["detail"]
        assert api.container.streams.open_for(ip="127.0.0.1") == 3
