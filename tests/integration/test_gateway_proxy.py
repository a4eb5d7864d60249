"""The reverse proxy over real HTTP on 127.0.0.1: a fake upstream service, the proxy, a client.

Both servers run in the test's event loop (uvicorn on free ports), so the fake upstream and the
test share events: "the client has the first chunk" is a fact the upstream can wait for, which
proves that nothing in between buffers the stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from cnop.common.clock import FakeClock
from cnop.common.config import Settings
from cnop.common.metrics import Metrics
from cnop.gateway.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from cnop.gateway.middleware import RequestContextMiddleware
from cnop.gateway.proxy import RetryPolicy, ReverseProxy, Upstream
from cnop.gateway.upstreams import Route, RouteTable
from tests.support.asgi_server import RunningServer, serve_asgi

DEADLINE = 15.0  # generous: a buffering proxy would hang here, a working one takes milliseconds


@dataclass
class FakeService:
    """What the fake upstream saw, and the hand-offs the tests wait on."""

    client_has_first: asyncio.Event = field(default_factory=asyncio.Event)
    upstream_has_first: asyncio.Event = field(default_factory=asyncio.Event)
    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)
    request_ids: list[str | None] = field(default_factory=list)
    last_event_ids: list[str | None] = field(default_factory=list)
    slow_calls: int = 0

    def app(self) -> Starlette:
        async def echo(request: Request) -> Response:
            self.request_ids.append(request.headers.get("x-request-id"))
            return JSONResponse(
                {
                    "path": request.url.path,
                    "query": request.url.query,
                    "request_id": request.headers.get("x-request-id"),
                    "forwarded_for": request.headers.get("x-forwarded-for"),
                },
                headers={"x-request-id": request.headers.get("x-request-id", "")},
            )

        async def chunks(request: Request) -> Response:
            async def body() -> AsyncIterator[bytes]:
                yield b"first-chunk;"
                await asyncio.wait_for(self.client_has_first.wait(), DEADLINE)
                yield b"second-chunk"

            return StreamingResponse(body(), media_type="application/octet-stream")

        async def upload(request: Request) -> Response:
            sizes: list[int] = []
            async for chunk in request.stream():
                if chunk:
                    sizes.append(len(chunk))
                    self.upstream_has_first.set()
            return JSONResponse({"bytes": sum(sizes), "chunks": len(sizes)}, status_code=201)

        async def events(request: Request) -> Response:
            self.last_event_ids.append(request.headers.get("last-event-id"))

            async def stream() -> AsyncIterator[bytes]:
                try:
                    yield b"retry: 2000\n\n"
                    yield b'id: 7\nevent: order.queued\ndata: {"order_id": "o1"}\n\n'
                    await asyncio.wait_for(self.client_has_first.wait(), DEADLINE)
                    yield b'id: 8\nevent: order.completed\ndata: {"order_id": "o1"}\n\n'
                    while True:  # an open stream, as the real one is, until the client leaves
                        await asyncio.sleep(0.05)
                        yield b": heartbeat\n\n"
                finally:
                    self.stream_closed.set()

            return StreamingResponse(stream(), media_type="text/event-stream")

        async def slow(request: Request) -> Response:
            self.slow_calls += 1
            await asyncio.sleep(3)
            return JSONResponse({"late": True})

        async def refuse(request: Request) -> Response:
            return JSONResponse({"code": "insufficient_funds"}, status_code=422)

        return Starlette(
            routes=[
                StarletteRoute("/api/v1/orders", echo, methods=["GET"]),
                StarletteRoute("/api/v1/orders/refuse", refuse, methods=["POST"]),
                StarletteRoute("/api/v1/orders/chunks", chunks),
                StarletteRoute("/api/v1/orders/upload", upload, methods=["POST"]),
                StarletteRoute("/api/v1/events", events),
                StarletteRoute("/api/v1/slow", slow, methods=["GET", "POST"]),
            ]
        )


@dataclass
class Stack:
    service: FakeService
    upstream: RunningServer
    gateway: RunningServer
    proxy: ReverseProxy
    clock: FakeClock
    client: httpx2.AsyncClient

    @property
    def breaker(self) -> CircuitBreaker:
        return self.proxy.upstreams["order"].breaker


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    service = FakeService()
    clock = FakeClock()
    async with serve_asgi(service.app()) as upstream:
        proxy = ReverseProxy(
            RouteTable(
                [
                    Route("/api/v1/orders", "order"),
                    Route("/api/v1/events", "order", timeout=None),
                    Route("/api/v1/slow", "order", timeout=0.3),
                ]
            ),
            {
                "order": Upstream(
                    "order",
                    upstream.url,
                    httpx2.AsyncClient(trust_env=False),
                    CircuitBreaker(
                        "order",
                        BreakerPolicy(min_failures=5, open_seconds=10, half_open_probes=1),
                        monotonic=clock.timestamp,
                    ),
                )
            },
            metrics=Metrics(),
            retry=RetryPolicy(retries=2, backoff_seconds=0.01),
            replay_body_bytes=1024,
        )
        app = RequestContextMiddleware(proxy, Settings())
        async with (
            serve_asgi(app) as gateway,
            httpx2.AsyncClient(base_url=gateway.url, trust_env=False, timeout=DEADLINE) as client,
        ):
            yield Stack(service, upstream, gateway, proxy, clock, client)
        await proxy.aclose()


async def test_one_request_id_from_client_through_gateway_to_service_and_back(stack: Stack) -> None:
    response = await stack.client.get("/api/v1/orders?limit=5", headers={"x-request-id": "journey-0001"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "journey-0001"
    body = response.json()
    assert body == {
        "path": "/api/v1/orders",
        "query": "limit=5",
        "request_id": "journey-0001",
        "forwarded_for": "127.0.0.1",
    }

    # Without one, the gateway makes one, and the service sees the same.
    response = await stack.client.get("/api/v1/orders")
    made = response.headers["x-request-id"]
    assert len(made) == 32
    assert stack.service.request_ids[-1] == made


async def test_a_response_streams_through_chunk_by_chunk(stack: Stack) -> None:
    async def read() -> list[bytes]:
        received: list[bytes] = []
        async with stack.client.stream("GET", "/api/v1/orders/chunks") as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                received.append(chunk)
                if b"first-chunk;" in b"".join(received):
                    stack.service.client_has_first.set()  # the upstream sends the rest only now
        return received

    received = await asyncio.wait_for(read(), DEADLINE)
    assert b"".join(received) == b"first-chunk;second-chunk"


async def test_a_request_body_streams_through_before_it_has_ended(stack: Stack) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 5000  # more than the replay limit: streamed, not kept
        await asyncio.wait_for(stack.service.upstream_has_first.wait(), DEADLINE)
        yield b"b" * 5000

    response = await asyncio.wait_for(stack.client.post("/api/v1/orders/upload", content=body()), DEADLINE)
    assert response.status_code == 201
    assert response.json()["bytes"] == 10000
    assert response.json()["chunks"] >= 2


async def test_sse_passes_through_event_by_event_and_the_upstream_stream_closes_when_the_client_leaves(
    stack: Stack,
) -> None:
    retries: list[int | None] = []

    async def listen() -> list[dict[str, str]]:
        events: list[dict[str, str]] = []
        async with stack.client.sse("/api/v1/events", headers={"last-event-id": "6"}) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            async for event in source:
                if not event.data:
                    retries.append(event.retry)
                    continue
                events.append({"id": event.id or "", "event": event.event, "data": event.data})
                if event.id == "7":
                    stack.service.client_has_first.set()
                if event.id == "8":
                    break
        return events

    events = await asyncio.wait_for(listen(), DEADLINE)
    assert events == [
        {"id": "7", "event": "order.queued", "data": '{"order_id": "o1"}'},
        {"id": "8", "event": "order.completed", "data": '{"order_id": "o1"}'},
    ]
    assert retries == [2000]  # the reconnect hint passes through too
    assert stack.service.last_event_ids == ["6"]
    # The client left: the gateway closes its upstream request, and the service's stream ends.
    await asyncio.wait_for(stack.service.stream_closed.wait(), DEADLINE)


async def test_an_upstream_slower_than_its_route_timeout_gets_a_503_with_retry_after(stack: Stack) -> None:
    response = await stack.client.post("/api/v1/slow", json={"order_type": "market_buy"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "service_unavailable"
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert stack.service.slow_calls == 1  # a plain POST: not retried
    assert stack.breaker.window_counts() == (0, 1)

    response = await stack.client.get("/api/v1/slow")
    assert response.status_code == 503
    assert stack.service.slow_calls == 4  # a GET: one try and two retries, each timed out


async def test_the_breaker_opens_on_a_dead_upstream_and_closes_when_it_is_back(stack: Stack) -> None:
    # Business refusals first: they count as the service answering, never as failures.
    for _ in range(5):
        assert (await stack.client.post("/api/v1/orders/refuse", json={})).status_code == 422
    assert stack.breaker.window_counts() == (5, 0)

    port = stack.upstream.port
    await stack.upstream.stop()
    for _ in range(5):
        response = await stack.client.post("/api/v1/orders/refuse", json={})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
    assert stack.breaker.state is BreakerState.OPEN  # 5 failures of 10 calls in the window
    response = await stack.client.get("/api/v1/orders")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "10"
    assert "127.0.0.1" not in response.text and str(port) not in response.text

    # The service comes back on its address; after the open period one probe closes the breaker.
    service = FakeService()
    async with serve_asgi(service.app(), port=port) as back:
        assert back.port == port
        assert (await stack.client.get("/api/v1/orders")).status_code == 503  # still open
        stack.clock.advance(10)
        response = await stack.client.get("/api/v1/orders", headers={"x-request-id": "after-outage"})
        assert response.status_code == 200
        assert json.loads(response.text)["request_id"] == "after-outage"
        assert stack.breaker.state is BreakerState.CLOSED
