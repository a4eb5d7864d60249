"""Server-Sent Events through a real HTTP server on 127.0.0.1 (streaming needs a real socket)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx2 as httpx
import pytest
import uvicorn

from cnop.common.jsonio import loads
from cnop.common.shared.redis_events import STREAM_ID
from tests.conftest import StoreFactory
from tests.support.api import Api, open_api
from tests.support.redis_server import RedisServer
from tests.support.wire import read


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve(store_factory: StoreFactory, **overrides: Any) -> AsyncIterator[tuple[Api, str]]:
    """The whole app on a real socket (127.0.0.1, a free port), stopped after."""
    api, lifespan = await open_api(store_factory, **overrides)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api.app, host="127.0.0.1", port=port, lifespan="off", log_config=None))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        yield api, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture(params=["in-process", "redis"])
async def served(store_factory: StoreFactory, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Api, str]]:
    overrides: dict[str, Any] = {}
    if request.param == "redis":
        overrides = {
            "redis_url": request.getfixturevalue("redis_url"),
            "redis_prefix": request.getfixturevalue("redis_prefix"),
        }
    async with serve(store_factory, **overrides) as served:
        yield served


def position(event_id: str) -> tuple[int, ...]:
    """An event id's order: `17` in process, `1733212345678-0` (a stream id) with Redis."""
    return tuple(int(part) for part in event_id.split("-"))


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
        order_id = read(placed)["data"]["order_id"]
        r = await api.client.delete(f"/api/v1/orders/{order_id}", headers=headers)
        assert r.status_code == 200
        async with http.stream("GET", "/api/v1/events", headers={**headers, "Last-Event-ID": queued["id"]}) as stream:
            (missed,) = await asyncio.wait_for(read_events(stream.aiter_lines(), 1), 5)
            assert missed["event"] == "order.cancelled" and missed["data"]["order_id"] == order_id
            assert missed["data"] == loads(r.content)["data"]
            assert missed["data"]["status"] == "cancelled" and missed["data"]["held_amount"] == "400.00"
            assert position(missed["id"]) > position(queued["id"])
        r = await http.get("/api/v1/events")
        assert r.status_code == 401


# --- with Redis: any process serves the stream and resumes it --------------------------------


async def test_with_redis_a_stream_on_one_app_hears_another_and_resumes_on_a_third(
    store_factory: StoreFactory, redis_url: str, redis_prefix: str
) -> None:
    """Two apps over one store and one Redis: events of one reach a stream held by the other, and
    `Last-Event-ID` resumes on a third app started after them (a restart), exactly once each, in order."""
    shared = {"redis_url": redis_url, "redis_prefix": redis_prefix}
    async with serve(store_factory, **shared) as (one, _), serve(store_factory, **shared) as (_, two_base):
        _, headers = await one.register()
        await one.deposit(headers, "10000")
        one.set_price("BTC", "50000")
        async with httpx.AsyncClient(base_url=two_base, timeout=10) as http:
            async with http.stream("GET", "/api/v1/events", headers=headers) as stream:
                assert stream.status_code == 200
                lines = stream.aiter_lines()
                bought = await one.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.01")
                assert bought.status_code == 201
                (completed,) = await asyncio.wait_for(read_events(lines, 1), 10)
                assert completed["event"] == "order.completed" and completed["data"] == loads(bought.content)["data"]
            # Away: two more orders happen on the first app.
            placed = await one.order(headers, order_type="limit_buy", asset_id="BTC", quantity="0.01", price="40000")
            assert placed.status_code == 201
            order_id = read(placed)["data"]["order_id"]
            cancelled = await one.client.delete(f"/api/v1/orders/{order_id}", headers=headers)
            assert cancelled.status_code == 200
    # Both apps are gone; a new one (a restarted process) resumes from the stream in Redis.
    resume = {**headers, "Last-Event-ID": completed["id"]}
    async with (
        serve(store_factory, **shared) as (three, three_base),
        httpx.AsyncClient(base_url=three_base, timeout=10) as http,
        http.stream("GET", "/api/v1/events", headers=resume) as stream,
    ):
        lines = stream.aiter_lines()
        missed = await asyncio.wait_for(read_events(lines, 2), 10)
        later = await three.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.02")
        assert later.status_code == 201
        (live,) = await asyncio.wait_for(read_events(lines, 1), 10)
    assert [e["event"] for e in missed] == ["order.queued", "order.cancelled"]
    assert missed[0]["data"] == loads(placed.content)["data"] and missed[1]["data"] == loads(cancelled.content)["data"]
    assert live["event"] == "order.completed" and live["data"] == loads(later.content)["data"]
    ids = [completed["id"], missed[0]["id"], missed[1]["id"], live["id"]]
    assert all(STREAM_ID.fullmatch(i) for i in ids) and sorted(ids, key=position) == ids and len(set(ids)) == 4


async def test_with_redis_a_local_shape_id_or_garbage_replays_nothing(
    store_factory: StoreFactory, redis_url: str, redis_prefix: str
) -> None:
    async with serve(store_factory, redis_url=redis_url, redis_prefix=redis_prefix) as (api, base):
        _, headers = await api.register()
        await api.deposit(headers, "1000")
        api.set_price("BTC", "50000")
        assert (await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.001")).status_code == 201
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            for foreign in ("1", "abc", "0-x"):
                async with http.stream("GET", "/api/v1/events", headers={**headers, "Last-Event-ID": foreign}) as s:
                    assert s.status_code == 200
                    lines = s.aiter_lines()
                    sold = await api.order(headers, order_type="market_sell", asset_id="BTC", quantity="0.0001")
                    assert sold.status_code == 201
                    # The first event is the one published after connecting: nothing was replayed.
                    (first,) = await asyncio.wait_for(read_events(lines, 1), 10)
                    assert first["data"] == loads(sold.content)["data"], foreign
            r = await http.get("/api/v1/events", headers={**headers, "Last-Event-ID": "9" * 65})
            assert r.status_code == 422


async def read_to_end(lines: AsyncIterator[str]) -> list[str]:
    return [line async for line in lines]


async def test_with_redis_down_streams_end_with_a_retry_hint_trades_go_on_and_events_flow_again(
    store_factory: StoreFactory, restartable_redis: RedisServer, redis_prefix: str
) -> None:
    # The edge's rate limits are another part's outage story; this test isolates the events.
    settings = {"redis_url": restartable_redis.url, "redis_prefix": redis_prefix, "rate_limit_enabled": False}
    async with serve(store_factory, **settings) as (api, base):
        username, headers = await api.register()
        await api.deposit(headers, "10000")
        api.set_price("BTC", "50000")
        async with httpx.AsyncClient(base_url=base, timeout=15) as http:
            async with http.stream("GET", "/api/v1/events", headers=headers) as stream:
                lines = stream.aiter_lines()
                first = await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.01")
                (before,) = await asyncio.wait_for(read_events(lines, 1), 10)
                assert before["data"] == loads(first.content)["data"]
                restartable_redis.stop()
                # The open stream ends (200 already sent) with a retry hint, not an error.
                rest = await asyncio.wait_for(read_to_end(lines), 15)
                assert [line for line in rest if line] == ["retry: 5000"]
            # A trade while Redis is down is not failed by its notification.
            during = await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.02")
            assert during.status_code == 201, during.text
            r = await http.get("/api/v1/balance", headers=headers)
            assert r.status_code == 200, r.text
            balance = read(r)
            assert read(during)["data"]["status"] == "completed"
            assert Decimal(balance["available_balance"]) == Decimal("10000") - Decimal("500.00") - Decimal("1000.00")
            # A reconnect while it is down gets the hint at once, again a 200.
            resume = {**headers, "Last-Event-ID": before["id"]}
            async with http.stream("GET", "/api/v1/events", headers=resume) as again:
                assert again.status_code == 200
                assert [line for line in await asyncio.wait_for(read_to_end(again.aiter_lines()), 15) if line] == [
                    "retry: 2000",
                    "retry: 5000",
                ]
            # The failed sends are counted where an operator looks (while Redis stays down).
            async with asyncio.timeout(15):
                while 'cnop_event_bus_problems_total{kind="publish_retry"}' not in (await http.get("/metrics")).text:
                    await asyncio.sleep(0.1)
            restartable_redis.restart()
            # Back (empty): the outbox delivers the notification held during the outage, and the
            # client resuming from its last id receives it; nothing restarted in the app.
            async with asyncio.timeout(20):
                while True:
                    async with http.stream("GET", "/api/v1/events", headers=resume) as back:
                        assert back.status_code == 200
                        lines = back.aiter_lines()
                        got = await read_events_or_end(lines)
                        if got is not None:
                            break
                    await asyncio.sleep(0.2)
            assert got["event"] == "order.completed" and got["data"] == loads(during.content)["data"]
            assert position(got["id"]) > position(before["id"])
            metrics = (await http.get("/metrics")).text
            assert 'cnop_event_bus_problems_total{kind="dropped"}' not in metrics
    assert api.container.events.counters.publish_failures >= 1  # type: ignore[attr-defined]
    assert api.container.events.counters.dropped == 0  # type: ignore[attr-defined]
    assert username


async def read_events_or_end(lines: AsyncIterator[str]) -> dict[str, Any] | None:
    """The next event, or None if the stream ends (with a retry hint) before one comes."""
    current: dict[str, Any] = {}
    async for line in lines:
        if line.startswith(":") or line.startswith("retry:"):
            continue
        if not line:
            if current:
                return current
            continue
        name, _, value = line.partition(": ")
        current[name] = loads(value) if name == "data" else value
    return None
