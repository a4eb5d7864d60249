"""/health (liveness) and /health/ready (readiness)."""

from __future__ import annotations

import asyncio

import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from cnop.common.health import CheckFailed, HealthCheck

from .conftest import build_app


async def ok() -> None:
    return None


async def broken() -> None:
    raise ConnectionError("10.0.0.5:5432 refused, user=admin")


async def stale() -> None:
    raise CheckFailed("last price tick 45 s ago")


async def slow() -> None:
    await asyncio.sleep(5)


def fetch(health: HealthCheck, path: str) -> tuple[int, dict[str, object]]:
    with capture_logs(), TestClient(build_app(health=health).app) as client:
        response = client.get(path)
    return response.status_code, response.json()


def test_all_checks_passing_is_healthy_and_ready() -> None:
    health = HealthCheck(service="gateway", version="1.2.3")
    health.add("store", ok, critical=True)
    health.add("prices", ok)

    assert fetch(health, "/health") == (
        200,
        {
            "status": "healthy",
            "service": "gateway",
            "version": "1.2.3",
            "checks": {"store": {"status": "ok"}, "prices": {"status": "ok"}},
        },
    )
    assert fetch(health, "/health/ready")[0] == 200


def test_a_failing_non_critical_check_degrades_liveness_but_fails_readiness() -> None:
    health = HealthCheck(service="gateway")
    health.add("store", ok, critical=True)
    health.add("prices", stale)

    status, body = fetch(health, "/health")
    assert status == 200
    assert body["status"] == "degraded"
    assert body["checks"] == {
        "store": {"status": "ok"},
        "prices": {"status": "fail", "detail": "last price tick 45 s ago"},
    }
    status, body = fetch(health, "/health/ready")
    assert status == 503
    assert body["status"] == "unhealthy"


def test_a_check_not_required_for_readiness_is_named_but_keeps_the_process_ready() -> None:
    # The shared-state Redis: while it is down the process serves on its own (degraded), so a
    # load balancer must not take every replica out of service.
    health = HealthCheck(service="gateway")
    health.add("store", ok, critical=True)
    health.add("redis", stale, critical=False, readiness=True, required=False)

    assert fetch(health, "/health")[1]["status"] == "degraded"
    status, body = fetch(health, "/health/ready")
    assert status == 200
    assert body["status"] == "degraded"
    assert body["checks"]["redis"] == {"status": "fail", "detail": "last price tick 45 s ago"}

    health.add("prices", stale)  # a required one failing still makes it unready
    assert fetch(health, "/health/ready")[0] == 503


def test_a_failing_critical_check_is_503_and_hides_the_exception() -> None:
    health = HealthCheck(service="gateway")
    health.add("store", broken, critical=True)

    with capture_logs() as logs, TestClient(build_app(health=health).app) as client:
        response = client.get("/health")

    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy"
    assert response.json()["checks"]["store"] == {"status": "fail", "detail": "check failed"}
    assert "10.0.0.5" not in response.text
    assert any(e["event"] == "health_check_failed" and e.get("exc_info") for e in logs)


def test_a_slow_check_times_out_as_a_failure() -> None:
    health = HealthCheck(service="gateway", default_timeout=0.05)
    health.add("prices", slow)

    status, body = fetch(health, "/health/ready")
    assert status == 503
    assert body["checks"] == {"prices": {"status": "fail", "detail": "timed out after 0.05s"}}


def test_checks_can_be_limited_to_liveness_or_readiness() -> None:
    health = HealthCheck(service="gateway")
    health.add("store", broken, critical=True, liveness=False)

    assert fetch(health, "/health")[0] == 200
    assert fetch(health, "/health/ready")[0] == 503


def test_a_check_name_is_registered_once() -> None:
    health = HealthCheck(service="gateway")
    health.add("store", ok)
    with pytest.raises(ValueError, match="already registered"):
        health.add("store", ok)


def test_a_kept_liveness_answer_is_given_again_for_its_seconds_and_readiness_is_never_kept() -> None:
    calls = 0
    failing = False

    async def counted() -> None:
        nonlocal calls
        calls += 1
        if failing:
            raise ConnectionError("down")

    health = HealthCheck(service="gateway", liveness_cache_seconds=3600)
    health.add("store", counted, critical=True)
    with capture_logs(), TestClient(build_app(health=health).app) as client:
        first = client.get("/health")
        failing = True
        again = client.get("/health")  # the kept answer: same status, bytes and headers
        assert (first.status_code, again.status_code) == (200, 200) and calls == 1
        assert again.content == first.content and again.headers["cache-control"] == "no-store"
        assert again.headers["content-type"] == first.headers["content-type"] == "application/json"
        assert client.get("/health/ready").status_code == 503 and calls == 2  # readiness runs its checks

    fresh = HealthCheck(service="gateway")  # 0 seconds (the default): every request runs the checks
    fresh.add("store", counted, critical=True)
    failing = False
    with capture_logs(), TestClient(build_app(health=fresh).app) as client:
        assert client.get("/health").status_code == 200
        failing = True
        assert client.get("/health").status_code == 503 and calls == 4


def test_a_kept_liveness_answer_is_run_again_once_its_seconds_are_over(monkeypatch: pytest.MonkeyPatch) -> None:
    import cnop.common.health as module

    now = [1000.0]
    monkeypatch.setattr(module, "monotonic", lambda: now[0])
    results: list[Exception | None] = [None, ConnectionError("down")]

    async def probe() -> None:
        outcome = results.pop(0) if results else None
        if outcome is not None:
            raise outcome

    health = HealthCheck(service="gateway", liveness_cache_seconds=1.0)
    health.add("store", probe, critical=True)
    with capture_logs(), TestClient(build_app(health=health).app) as client:
        assert client.get("/health").status_code == 200
        now[0] += 0.99
        assert client.get("/health").status_code == 200  # still the kept answer
        now[0] += 0.01
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["checks"]["store"] == {"status": "fail", "detail": "check failed"}
