"""Server-Sent Events through a real HTTP server on 127.0.0.1 (streaming needs a real socket)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx2 as httpx
import pytest
import uvicorn

from cnop.common.jsonio import loads
from tests.api.conftest import Api, open_api
from tests.conftest import StoreFactory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def served(store_factory: StoreFactory) -> AsyncIterator[tuple[Api, str]]:
    api, lifespan = await open_api(store_factory)
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


async def read_events(lines: AsyncIterator[str], count: int) -> list[dict[str, Any]]:
    """The next `count` events (comments and retry lines skipped)."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async for line in lines:
        if line.startswith(":") or line.startswith("retry:"):
            continue
        if not line:
            if current:
                events.append(current)
                current = {}
                if len(events) == count:
                    return events
            continue
        name, _, value = line.partition(": ")
        current[name] = loads(value) if name == "data" else value
    return events


async def test_order_events_and_price_ticks_stream_and_resume(served: tuple[Api, str]) -> None:
    api, base = served
    _, headers = await api.register()
    await api.deposit(headers, "10000")
    api.set_price("BTC", "50000")
    assert (await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.01")).status_code == 201
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        async with http.stream("GET", "/api/v1/events", headers=headers) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            placed = await api.order(headers, order_type="limit_buy", asset_id="BTC", quantity="0.01", price="40000")
            assert placed.status_code == 201
            (queued,) = await asyncio.wait_for(read_events(lines, 1), 5)
            assert queued["event"] == "order.queued"
            # The event carries the API's order object, Decimal fields as the same exact strings.
            assert queued["data"] == loads(placed.content)["data"]
            assert queued["data"]["quantity"] == "0.01" and queued["data"]["price"] == "40000"
            assert queued["data"]["held_amount"] == "400.00" and queued["data"]["price_bound"] is None
            assert queued["data"]["executed_price"] is None and queued["data"]["total_amount"] is None
            api.set_price("BTC", "49000.5")
            api.set_price("DOGE", "0.2")  # not held nor traded: not streamed
            (price,) = await asyncio.wait_for(read_events(lines, 1), 5)
            assert price["event"] == "price.tick" and price["data"]["asset_id"] == "BTC"
            assert price["data"]["price"] == "49000.5"
        order_id = placed.json()["data"]["order_id"]
        r = await api.client.delete(f"/api/v1/orders/{order_id}", headers=headers)
        assert r.status_code == 200
        async with http.stream("GET", "/api/v1/events", headers={**headers, "Last-Event-ID": queued["id"]}) as stream:
            (missed,) = await asyncio.wait_for(read_events(stream.aiter_lines(), 1), 5)
            assert missed["event"] == "order.cancelled" and missed["data"]["order_id"] == order_id
            assert missed["data"] == loads(r.content)["data"]
            assert missed["data"]["status"] == "cancelled" and missed["data"]["held_amount"] == "400.00"
            assert int(missed["id"]) > int(queued["id"])
        r = await http.get("/api/v1/events")
        assert r.status_code == 401
