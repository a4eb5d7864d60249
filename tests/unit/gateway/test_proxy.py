"""The reverse proxy's rules with an in-memory upstream and a fake clock: routing, retries, breaker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx2
import pytest

from cnop.common.clock import FakeClock
from cnop.common.config import Settings
from cnop.common.metrics import Metrics
from cnop.gateway.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from cnop.gateway.proxy import RetryPolicy, ReverseProxy, Upstream, is_retryable
from cnop.gateway.upstreams import ROUTES, Route, RouteTable

Handler = Callable[[httpx2.Request], Awaitable[httpx2.Response]]
POLICY = BreakerPolicy(window_seconds=30, min_failures=5, failure_ratio=0.5, open_seconds=10, half_open_probes=2)


@dataclass
class Harness:
    proxy: ReverseProxy
    client: httpx2.AsyncClient
    clock: FakeClock
    metrics: Metrics
    seen: list[httpx2.Request] = field(default_factory=list)

    @property
    def breaker(self) -> CircuitBreaker:
        return self.proxy.upstreams["order"].breaker


@pytest.fixture
async def make_harness() -> AsyncIterator[Callable[[Handler], Harness]]:
    made: list[Harness] = []

    def make(handler: Handler) -> Harness:
        clock = FakeClock()
        metrics = Metrics()
        seen: list[httpx2.Request] = []

        async def record(request: httpx2.Request) -> httpx2.Response:
            await request.aread()
            seen.append(request)
            return await handler(request)

        upstream = Upstream(
            "order",
            "http://order.internal:8080",
            httpx2.AsyncClient(transport=httpx2.MockTransport(record)),
            CircuitBreaker("order", POLICY, monotonic=clock.timestamp, on_transition=metrics.record_breaker_transition),
        )
        proxy = ReverseProxy(
            RouteTable([Route("/api/v1/orders", "order", timeout=5.0)]),
            {"order": upstream},
            metrics=metrics,
            retry=RetryPolicy(retries=2, backoff_seconds=0),
        )
        client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=proxy), base_url="http://gateway")
        harness = Harness(proxy, client, clock, metrics, seen)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.client.aclose()
        await harness.proxy.aclose()


def json_response(status: int, body: object) -> httpx2.Response:
    """A response whose body is still to be streamed, as one from the network is."""
    data = json.dumps(body).encode()
    headers = {"content-type": "application/json", "content-length": str(len(data))}
    return httpx2.Response(status, headers=headers, stream=httpx2.ByteStream(data))


def answer(status: int, body: dict[str, object] | None = None) -> Handler:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        return json_response(status, body or {"status": status})

    return handler


def refuse_connection() -> Handler:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    return handler


def assert_unavailable(response: httpx2.Response, retry_after: int) -> None:
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == str(retry_after)
    body = response.json()
    assert body["code"] == "service_unavailable"
    assert body["status"] == 503
    # Nothing internal: no host, port, upstream name or exception.
    text = response.text.lower()
    for leak in ("order.internal", "8080", "connecterror", "refused", "traceback", "upstream"):
        assert leak not in text


# --- routing and headers -------------------------------------------------------------------------


def test_routes_match_by_longest_prefix_and_whole_segments() -> None:
    table = RouteTable(ROUTES)
    assert table.match("/api/v1/orders").upstream == "order"  # type: ignore[union-attr]
    assert table.match("/api/v1/orders/01JABC").upstream == "order"  # type: ignore[union-attr]
    assert table.match("/api/v1/admin/users/bob/transactions").upstream == "user"  # type: ignore[union-attr]
    assert table.match("/api/v1/admin/prices").upstream == "inventory"  # type: ignore[union-attr]
    assert table.match("/api/v1/ordersx") is None
    assert table.match("/alpaca/v2/positions/BTC/USD").upstream == "order"  # type: ignore[union-attr]
    assert table.match("/alpacax") is None
    assert table.match("/health") is None
    assert table.upstreams == {"user", "order", "inventory", "insights"}


def test_timeouts_from_config_apply_to_their_prefix_and_an_unknown_prefix_is_an_error() -> None:
    table = RouteTable.configured({"/api/v1/insights": 45.0})
    assert table.match("/api/v1/insights/portfolio").timeout == 45.0  # type: ignore[union-attr]
    assert table.match("/api/v1/orders").timeout == 10.0  # type: ignore[union-attr]
    assert table.match("/api/v1/events").timeout is None  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="/api/v1/nope"):
        RouteTable.configured({"/api/v1/nope": 1.0})


def test_upstream_urls_and_timeouts_are_read_from_name_value_lists() -> None:
    settings = Settings(
        upstream_urls="user=http://user:8080, order=http://order:8080",  # type: ignore[arg-type]
        upstream_timeouts="/api/v1/insights=30",  # type: ignore[arg-type]
    )
    assert settings.upstream_urls == {"user": "http://user:8080", "order": "http://order:8080"}
    assert settings.upstream_timeouts == {"/api/v1/insights": 30.0}


def test_a_proxy_without_a_url_for_a_routed_service_does_not_start() -> None:
    with pytest.raises(ValueError, match="inventory"):
        ReverseProxy.from_settings(Settings(upstream_urls={"user": "http://u", "order": "http://o"}))


async def test_the_request_goes_upstream_whole_with_the_gateway_request_id_and_without_hop_headers(
    make_harness: Callable[[Handler], Harness],
) -> None:
    h = make_harness(answer(201, {"data": "ok"}))
    response = await h.client.post(
        "/api/v1/orders/x%2Fy?limit=5&asset_id=BTC",
        content=b'{"a": 1}',
        headers={
            "authorization": "Bearer t0k3n",
            "x-request-id": "spoofed",
            "x-forwarded-for": "6.6.6.6",
            "connection": "keep-alive, x-secret-hop",
            "x-secret-hop": "1",
            "content-type": "application/json",
        },
    )
    assert response.status_code == 201
    assert response.json() == {"data": "ok"}
    [sent] = h.seen
    assert sent.method == "POST"
    assert sent.url.raw_path == b"/api/v1/orders/x%2Fy?limit=5&asset_id=BTC"
    assert sent.url.host == "order.internal"
    assert sent.content == b'{"a": 1}'
    assert sent.headers["authorization"] == "Bearer t0k3n"
    assert sent.headers["content-type"] == "application/json"
    # No request context ran here, so the client's values are dropped, not passed on.
    assert "x-request-id" not in sent.headers
    assert "x-forwarded-for" not in sent.headers
    assert sent.headers["host"] == "order.internal:8080"
    assert "x-secret-hop" not in sent.headers
    assert sent.headers.get("connection") != "keep-alive, x-secret-hop"


async def test_the_request_id_and_client_ip_the_gateway_chose_go_upstream(
    make_harness: Callable[[Handler], Harness],
) -> None:
    h = make_harness(answer(200))
    inner = h.proxy

    async def with_context(scope, receive, send):  # type: ignore[no-untyped-def]
        scope.setdefault("state", {}).update(request_id="req-123", client_ip="203.0.113.9")
        await inner(scope, receive, send)

    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=with_context), base_url="http://g") as client:
        response = await client.get("/api/v1/orders", headers={"x-request-id": "other", "x-forwarded-for": "1.2.3.4"})
    assert response.status_code == 200
    [sent] = h.seen
    assert sent.headers["x-request-id"] == "req-123"
    assert sent.headers["x-forwarded-for"] == "203.0.113.9"
    assert sent.headers["x-forwarded-proto"] == "http"


# --- retries -------------------------------------------------------------------------------------


def test_which_requests_may_be_retried() -> None:
    assert is_retryable("GET", {}, b"")
    assert is_retryable("HEAD", {}, b"")
    assert is_retryable("POST", {b"idempotency-key": b"k1"}, b'{"amount": "5"}')
    assert is_retryable("POST", {}, b'{"order_type": "market_buy", "client_order_id": "c-1"}')
    assert not is_retryable("POST", {}, b'{"order_type": "market_buy"}')
    assert not is_retryable("POST", {}, b'{"note": "client_order_id"}')  # the name as a value is not the field
    assert not is_retryable("POST", {}, b'{"client_order_id": null}')
    assert not is_retryable("POST", {}, b'{"client_order_id": ""}')
    assert not is_retryable("POST", {}, b"not json client_order_id")
    assert not is_retryable("POST", {b"idempotency-key": b"k1"}, None)  # a streamed body cannot be resent
    assert not is_retryable("DELETE", {}, b"")
    assert not is_retryable("PUT", {}, b"{}")


async def test_a_plain_post_is_never_retried(make_harness: Callable[[Handler], Harness]) -> None:
    h = make_harness(refuse_connection())
    response = await h.client.post("/api/v1/orders", json={"order_type": "market_buy", "asset_id": "BTC"})
    assert_unavailable(response, 1)
    assert len(h.seen) == 1
    assert h.breaker.window_counts() == (0, 1)
    assert 'cnop_upstream_retries_total{upstream="order"}' not in h.metrics.render().decode()


async def test_a_plain_post_answered_503_is_passed_back_not_retried(make_harness: Callable[[Handler], Harness]) -> None:
    h = make_harness(answer(503, {"code": "price_unavailable"}))
    response = await h.client.post("/api/v1/orders", json={"order_type": "market_buy"})
    assert response.status_code == 503
    assert response.json() == {"code": "price_unavailable"}
    assert len(h.seen) == 1


@pytest.mark.parametrize(
    ("method", "headers", "body"),
    [
        ("GET", {}, None),
        ("POST", {"idempotency-key": "dep-1"}, {"amount": "10"}),
        ("POST", {}, {"order_type": "market_buy", "client_order_id": "c-42"}),
    ],
)
async def test_idempotent_requests_are_retried_after_a_connect_error_and_then_succeed(
    make_harness: Callable[[Handler], Harness], method: str, headers: dict[str, str], body: dict[str, str] | None
) -> None:
    calls = 0

    async def flaky(request: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise httpx2.ConnectError("refused", request=request)
        return json_response(201, {"attempt": calls})

    h = make_harness(flaky)
    response = await h.client.request(method, "/api/v1/orders", headers=headers, json=body)
    assert response.status_code == 201
    assert response.json() == {"attempt": 3}
    assert len(h.seen) == 3
    assert all(sent.content == h.seen[0].content for sent in h.seen)  # the same body each time
    assert h.breaker.window_counts() == (1, 2)
    assert 'cnop_upstream_retries_total{upstream="order"} 2.0' in h.metrics.render().decode()


async def test_retries_stop_at_the_limit_and_the_client_gets_a_503_with_retry_after(
    make_harness: Callable[[Handler], Harness],
) -> None:
    h = make_harness(refuse_connection())
    response = await h.client.get("/api/v1/orders")
    assert_unavailable(response, 1)
    assert len(h.seen) == 3  # one try and two retries


async def test_a_retryable_request_retries_a_502_but_not_a_500(make_harness: Callable[[Handler], Harness]) -> None:
    statuses = iter([502, 200])

    async def gateway_error_once(request: httpx2.Request) -> httpx2.Response:
        return json_response(next(statuses), {})

    h = make_harness(gateway_error_once)
    assert (await h.client.get("/api/v1/orders")).status_code == 200
    assert len(h.seen) == 2

    h2 = make_harness(answer(500, {"code": "internal_error"}))
    response = await h2.client.get("/api/v1/orders")
    assert response.status_code == 500
    assert response.json() == {"code": "internal_error"}
    assert len(h2.seen) == 1


async def test_a_timeout_is_a_failure_and_a_503(make_harness: Callable[[Handler], Harness]) -> None:
    async def slow(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("timed out", request=request)

    h = make_harness(slow)
    response = await h.client.post("/api/v1/orders", json={"order_type": "market_buy"})
    assert_unavailable(response, 1)
    assert h.breaker.window_counts() == (0, 1)
    assert 'cnop_upstream_requests_total{outcome="timeout",upstream="order"} 1.0' in h.metrics.render().decode()


# --- the breaker through the proxy ---------------------------------------------------------------


async def test_weak_point_12_breaker_forgets_old_failures_bounds_half_open_probes_and_never_counts_4xx(
    make_harness: Callable[[Handler], Harness],
) -> None:
    """Weak point 12: the old breaker never forgot, let every request probe, and tripped on 4xx."""
    mode = {"status": 422}
    release = asyncio.Event()
    in_flight = 0

    async def upstream(request: httpx2.Request) -> httpx2.Response:
        nonlocal in_flight
        if mode["status"] == 0:
            raise httpx2.ConnectError("refused", request=request)
        if mode["status"] == 200:
            in_flight += 1
            await release.wait()
            in_flight -= 1
        return json_response(mode["status"], {"code": "insufficient_funds"})

    h = make_harness(upstream)

    # 4xx answers never count: a hundred refusals leave it closed and every one reaches the service.
    for _ in range(100):
        response = await h.client.post("/api/v1/orders", json={"order_type": "market_buy"})
        assert response.status_code == 422
        assert response.json() == {"code": "insufficient_funds"}
    assert h.breaker.state is BreakerState.CLOSED
    assert h.breaker.window_counts() == (100, 0)
    assert len(h.seen) == 100

    # Failures are counted in a sliding window: four, then the window passes, then four more.
    h.clock.advance(31)
    mode["status"] = 0
    for _ in range(4):
        assert (await h.client.post("/api/v1/orders", json={})).status_code == 503
    h.clock.advance(31)
    for _ in range(4):
        assert (await h.client.post("/api/v1/orders", json={})).status_code == 503
    assert h.breaker.state is BreakerState.CLOSED
    assert len(h.seen) == 108

    # A fifth within the window opens it: requests are refused without reaching the service.
    assert (await h.client.post("/api/v1/orders", json={})).status_code == 503
    assert h.breaker.state is BreakerState.OPEN
    sent_before = len(h.seen)
    h.clock.advance(4)
    for _ in range(10):
        assert_unavailable(await h.client.get("/api/v1/orders"), 6)
    assert len(h.seen) == sent_before
    assert 'cnop_circuit_breaker_state{upstream="order"} 2.0' in h.metrics.render().decode()

    # Half-open: of twenty concurrent requests only two probes reach the service.
    h.clock.advance(6)
    mode["status"] = 200
    tasks = [asyncio.create_task(h.client.get("/api/v1/orders")) for _ in range(20)]
    for _ in range(200):
        if in_flight == 2 and sum(t.done() for t in tasks) == 18:
            break
        await asyncio.sleep(0.01)
    assert in_flight == 2
    refused = [t.result() for t in tasks if t.done()]
    assert len(refused) == 18
    for response in refused:
        assert_unavailable(response, 1)
    assert 'cnop_circuit_breaker_state{upstream="order"} 1.0' in h.metrics.render().decode()
    release.set()
    probes = [await t for t in tasks]
    assert sorted(r.status_code for r in probes) == [200] * 2 + [503] * 18
    assert len(h.seen) == sent_before + 2

    # Two successful probes close it, and traffic flows again.
    assert h.breaker.state is BreakerState.CLOSED
    assert (await h.client.get("/api/v1/orders")).status_code == 200
    text = h.metrics.render().decode()
    assert 'cnop_circuit_breaker_state{upstream="order"} 0.0' in text
    for state in ("open", "half_open", "closed"):
        assert f'cnop_circuit_breaker_transitions_total{{state="{state}",upstream="order"}} 1.0' in text
    assert 'cnop_upstream_requests_total{outcome="rejected",upstream="order"} 28.0' in text


async def test_4xx_answers_alone_never_open_it_even_when_every_call_is_one(
    make_harness: Callable[[Handler], Harness],
) -> None:
    for status in (400, 401, 403, 404, 409, 422, 429):
        h = make_harness(answer(status))
        for _ in range(20):
            assert (await h.client.get("/api/v1/orders")).status_code == status
        assert h.breaker.state is BreakerState.CLOSED
        assert h.breaker.window_counts() == (20, 0)


async def test_5xx_answers_count_as_failures(make_harness: Callable[[Handler], Harness]) -> None:
    h = make_harness(answer(500))
    for _ in range(5):
        assert (await h.client.post("/api/v1/orders", json={})).status_code == 500
    assert h.breaker.state is BreakerState.OPEN
    assert_unavailable(await h.client.post("/api/v1/orders", json={}), 10)
    assert len(h.seen) == 5


async def test_a_failed_probe_keeps_the_service_shielded(make_harness: Callable[[Handler], Harness]) -> None:
    h = make_harness(refuse_connection())
    for _ in range(5):
        await h.client.post("/api/v1/orders", json={})
    h.clock.advance(10)
    assert_unavailable(await h.client.post("/api/v1/orders", json={}), 1)  # the probe, refused by the service
    assert h.breaker.state is BreakerState.OPEN
    assert_unavailable(await h.client.post("/api/v1/orders", json={}), 10)
    assert len(h.seen) == 6


async def test_a_retry_never_passes_an_open_breaker(make_harness: Callable[[Handler], Harness]) -> None:
    h = make_harness(refuse_connection())
    for _ in range(4):
        await h.client.post("/api/v1/orders", json={})
    # The GET's first try is the fifth failure: its retries find the breaker open and stop.
    assert_unavailable(await h.client.get("/api/v1/orders"), 10)
    assert len(h.seen) == 5


async def test_an_unrouted_path_is_a_404_problem(make_harness: Callable[[Handler], Harness]) -> None:
    h = make_harness(answer(200))
    response = await h.client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert json.loads(response.text)["code"] == "not_found"
    assert h.seen == []
