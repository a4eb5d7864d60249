"""Per-IP and per-user rate limits."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient
from starlette.types import Scope
from structlog.testing import capture_logs

from cnop.common.clock import FakeClock
from cnop.common.counters import FallbackCounters
from cnop.gateway.middleware import MemoryCounters, RateLimitMiddleware

from .conftest import GatewayApp, build_app, make_settings


def user_from_header(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-test-user":
            return str(value.decode())
    return None


async def async_user_from_header(scope: Scope) -> str | None:
    return user_from_header(scope)


def assert_rate_headers(response: object, limit: int, remaining: int) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    assert headers["X-RateLimit-Limit"] == str(limit)
    assert headers["X-RateLimit-Remaining"] == str(remaining)
    reset = int(headers["X-RateLimit-Reset"])
    assert time.time() - 1 <= reset <= time.time() + 61


def test_every_response_carries_the_rate_headers(gateway: GatewayApp) -> None:
    with TestClient(gateway.app) as client:
        responses = [
            client.get("/api/v1/ping"),
            client.get("/nowhere"),
            client.put("/api/v1/orders/ORD-1234567890"),
            client.post("/api/v1/balance/deposit", json={}),
            client.get("/api/v1/raise/boom"),
            client.get("/health"),
            client.get("/metrics"),
        ]

    assert [r.status_code for r in responses] == [200, 404, 405, 422, 500, 200, 200]
    for response in responses:
        assert response.headers["X-RateLimit-Limit"] == "1000"
        assert int(response.headers["X-RateLimit-Remaining"]) >= 994
        assert int(response.headers["X-RateLimit-Reset"]) >= int(time.time())


def test_past_the_ip_limit_requests_get_429_and_never_reach_the_app() -> None:
    gateway = build_app(make_settings(rate_limit_per_ip="3/minute"))
    with TestClient(gateway.app) as client:
        allowed = [client.get("/api/v1/ping") for _ in range(3)]
        refused = client.get("/api/v1/ping", headers={"X-Request-ID": "too-many"})

    for remaining, response in zip([2, 1, 0], allowed, strict=True):
        assert response.status_code == 200
        assert_rate_headers(response, 3, remaining)
    assert gateway.calls == ["ping"] * 3

    assert refused.status_code == 429
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert_rate_headers(refused, 3, 0)
    assert refused.headers["X-Request-ID"] == "too-many"
    assert refused.headers["X-Frame-Options"] == "DENY"
    body = refused.json()
    assert body["code"] == "rate_limited"
    assert body["status"] == 429
    assert body["request_id"] == "too-many"


def test_health_and_metrics_are_never_limited_but_still_get_headers() -> None:
    gateway = build_app(make_settings(rate_limit_per_ip="2/minute"))
    with TestClient(gateway.app) as client:
        for _ in range(2):
            client.get("/api/v1/ping")
        assert client.get("/api/v1/ping").status_code == 429
        health = [client.get("/health") for _ in range(5)]
        metrics = client.get("/metrics")

    assert all(r.status_code == 200 for r in health)
    assert metrics.status_code == 200
    for response in [*health, metrics]:
        assert response.headers["X-RateLimit-Limit"] == "2"
        assert response.headers["X-RateLimit-Remaining"] == "0"


def test_each_client_ip_has_its_own_window() -> None:
    gateway = build_app(make_settings(rate_limit_per_ip="1/minute", trusted_proxies=["10.0.0.1"]))
    with TestClient(gateway.app, client=("10.0.0.1", 4000)) as client:
        first = client.get("/api/v1/ping", headers={"X-Forwarded-For": "198.51.100.1"})
        second = client.get("/api/v1/ping", headers={"X-Forwarded-For": "198.51.100.2"})
        again = client.get("/api/v1/ping", headers={"X-Forwarded-For": "198.51.100.1"})

    assert [first.status_code, second.status_code, again.status_code] == [200, 200, 429]


@pytest.mark.parametrize("identify", [user_from_header, async_user_from_header])
def test_the_user_limit_follows_the_user_across_addresses(identify: object) -> None:
    gateway = build_app(
        make_settings(rate_limit_per_ip="100/minute", rate_limit_per_user="2/minute"),
        identify_user=identify,  # type: ignore[arg-type]
    )
    alice = {"X-Test-User": "alice"}
    with TestClient(gateway.app, client=("203.0.113.1", 4000)) as home:
        first = home.get("/api/v1/ping", headers=alice)
        second = home.get("/api/v1/ping", headers=alice)
        third = home.get("/api/v1/ping", headers=alice)
        bob = home.get("/api/v1/ping", headers={"X-Test-User": "bob"})
        anonymous = home.get("/api/v1/ping")
    with TestClient(gateway.app, client=("198.51.100.50", 4000)) as office:
        elsewhere = office.get("/api/v1/ping", headers=alice)

    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 429]
    # Headers describe the tighter window: the user's.
    assert_rate_headers(first, 2, 1)
    assert_rate_headers(third, 2, 0)
    assert third.json()["code"] == "rate_limited"
    assert elsewhere.status_code == 429
    assert bob.status_code == 200
    assert_rate_headers(bob, 2, 1)
    assert anonymous.status_code == 200
    assert_rate_headers(anonymous, 100, 95)


def test_a_failing_counter_store_lets_requests_through() -> None:
    class BrokenStorage:
        async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
            raise ConnectionError("redis is down")

        async def get(self, key: str) -> int:
            raise ConnectionError("redis is down")

    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/x")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    limited = RateLimitMiddleware(app, make_settings(), storage=BrokenStorage())  # type: ignore[arg-type]
    with TestClient(limited) as client:
        response = client.get("/x")

    assert response.status_code == 200
    assert "X-RateLimit-Limit" not in response.headers


def test_with_the_shared_counters_failing_the_process_counts_on_its_own() -> None:
    """Redis down: the limit still holds (per process), with its headers; never off, never a 5xx."""

    class DownStorage:
        async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
            raise ConnectionError("redis is down")

        async def get(self, key: str) -> int:
            raise ConnectionError("redis is down")

        async def get_expiry(self, key: str) -> float:
            raise ConnectionError("redis is down")

        async def clear(self, key: str) -> None:
            raise ConnectionError("redis is down")

    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/x")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    counters = FallbackCounters(DownStorage(), MemoryCounters())  # type: ignore[arg-type]
    limited = RateLimitMiddleware(app, make_settings(rate_limit_per_ip="2/minute"), storage=counters)
    with capture_logs() as logs, TestClient(limited) as client:
        responses = [client.get("/x") for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["1", "0", "0"]
    assert responses[2].json()["code"] == "rate_limited"
    assert counters.degraded
    assert [entry["event"] for entry in logs].count("shared_counters_unavailable") == 1


def test_disabled_rate_limiting_sends_no_rate_headers() -> None:
    gateway = build_app(make_settings(rate_limit_enabled=False, rate_limit_per_ip="1/minute"))
    with TestClient(gateway.app) as client:
        responses = [client.get("/api/v1/ping") for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert "X-RateLimit-Limit" not in responses[0].headers
    assert "X-Request-ID" in responses[0].headers


# --- the in-process counter store -------------------------------------------------------------


async def test_memory_counters_count_within_a_window_and_start_over_after_it() -> None:
    clock = FakeClock()
    counters = MemoryCounters(clock)

    assert [await counters.incr("k", 60) for _ in range(3)] == [1, 2, 3]
    assert await counters.get("k") == 3
    assert await counters.get_expiry("k") == clock.timestamp() + 60
    clock.advance(59)
    assert await counters.incr("k", 60) == 4
    clock.advance(1)
    assert await counters.get("k") == 0
    assert await counters.incr("k", 60) == 1
    await counters.clear("k")
    assert await counters.get("k") == 0


async def test_memory_counters_stay_bounded() -> None:
    clock = FakeClock()
    counters = MemoryCounters(clock, max_keys=100, sweep_seconds=10)
    for n in range(1000):
        await counters.incr(f"ip-{n}", 60)
    assert len(counters) == 100
    assert await counters.get("ip-999") == 1  # the newest survive

    clock.advance(61)
    await counters.incr("fresh", 60)
    assert len(counters) == 1  # expired ones are swept


def test_a_window_resets_on_the_clock() -> None:
    clock = FakeClock()
    inner = build_app().app
    limited = RateLimitMiddleware(inner, make_settings(rate_limit_per_ip="1/minute"), clock=clock)
    with TestClient(limited) as client:
        assert client.get("/api/v1/ping").status_code == 200
        refused = client.get("/api/v1/ping")
        clock.advance(60)
        again = client.get("/api/v1/ping")

    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "60"
    assert refused.headers["X-RateLimit-Reset"] == str(int(FakeClock().timestamp()) + 60)
    assert again.status_code == 200


def test_a_failing_user_identifier_leaves_the_ip_limit_in_force() -> None:
    def broken(scope: Scope) -> str | None:
        raise KeyError("sub")

    gateway = build_app(make_settings(rate_limit_per_ip="1/minute"), identify_user=broken)
    with TestClient(gateway.app) as client:
        first = client.get("/api/v1/ping")
        second = client.get("/api/v1/ping")

    assert [first.status_code, second.status_code] == [200, 429]
    assert first.headers["X-RateLimit-Limit"] == "1"
