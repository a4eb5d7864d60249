"""Two real API processes alone, sharing one store and one Redis, while Redis goes away.

Two `cnop serve` processes with `CNOP_TRIGGER_ENGINE=false` and no workers, on one SQLite file
and one redis-server, all on 127.0.0.1 (issue 13 point 7). Redis stopped: every answer is still
2xx or a documented 4xx, rate limits still count (per process) with their headers, `/health`
says degraded and `/health/ready` names Redis; Redis started again: both processes recover by
themselves (health, shared counting, invalidation), each says so once in its log, and the books
balance.

What the processes share while Redis is up (one per-user count over both, the login guard, a
logout revoking the token everywhere at once, an asset deactivated on one refused on the other)
is shown on the whole fleet, workers included, in `tests/e2e/test_fleet.py`; one fleet serves all
of those, and this module keeps its own only for the outage without workers.

Every "within" is polled until true with a generous deadline, never timed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest

from tests.support.fleet import ADMIN, PASSWORD, Fleet, client, login, register
from tests.support.redis_server import RedisServer
from tests.support.wire import read

pytestmark = pytest.mark.system

DEADLINE_SECONDS = 15.0
USER_LIMIT = 200  # per user and minute


def eventually(check: Callable[[], Any], what: str, deadline: float = DEADLINE_SECONDS) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after the deadline."""
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            pytest.fail(f"not within {deadline:.0f} s: {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer.start() as server:
        yield server


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("shared-state")
    env = {
        "CNOP_PRICE_SOURCE": "manual",
        "CNOP_MAX_PRICE_AGE_SECONDS": "86400",
        "CNOP_RATE_LIMIT_PER_IP": "100000/minute",
        "CNOP_RATE_LIMIT_PER_USER": f"{USER_LIMIT}/minute",
        "CNOP_REDIS_PREFIX": f"ss{uuid.uuid4().hex[:8]}:",
        "CNOP_ASSET_CACHE_SECONDS": "3600",
    }
    with Fleet(workdir, f"sqlite:///{workdir / 'shared.db'}", redis.url, apis=2, workers=0, extra_env=env) as running:
        yield running


@pytest.fixture
def apis(fleet: Fleet) -> Iterator[tuple[httpx2.Client, httpx2.Client]]:
    first, second = fleet.api_urls()
    with client(first) as one, client(second) as two:
        yield one, two


def _new_user(http: httpx2.Client, deposit: str | None = None) -> tuple[str, dict[str, str]]:
    username = f"ss_{uuid.uuid4().hex[:10]}"
    register(http, username)
    auth = login(http, username)
    if deposit is not None:
        r = http.post("/api/v1/balance/deposit", json={"amount": deposit}, headers=auth)
        assert r.status_code == 201, r.text
    return username, auth


def _limit_buy(http: httpx2.Client, auth: dict[str, str], asset: str) -> httpx2.Response:
    body = {"order_type": "limit_buy", "asset_id": asset, "quantity": "1", "price": "1.00"}
    return http.post("/api/v1/orders", json=body, headers=auth)


def _set_active(http: httpx2.Client, admin: dict[str, str], asset: str, active: bool) -> None:
    r = http.post(f"/api/v1/admin/assets/{asset}/{'activate' if active else 'deactivate'}", headers=admin)
    assert r.status_code == 200, r.text
    assert read(r)["data"]["is_active"] is active


def _refused_as_not_tradeable(http: httpx2.Client, auth: dict[str, str], asset: str) -> bool:
    r = _limit_buy(http, auth, asset)
    assert r.status_code in (201, 422), r.text
    return r.status_code == 422 and read(r)["code"] == "asset_not_tradeable"


def _accepted(http: httpx2.Client, auth: dict[str, str], asset: str) -> bool:
    r = _limit_buy(http, auth, asset)
    assert r.status_code in (201, 422), r.text
    return r.status_code == 201


def _health(http: httpx2.Client, path: str) -> tuple[int, dict[str, Any]]:
    r = http.get(path)
    return r.status_code, read(r)


def _redis_check(http: httpx2.Client, path: str) -> str:
    return str(_health(http, path)[1]["checks"]["redis"]["status"])


def _remaining(r: httpx2.Response) -> int:
    assert r.status_code < 500, r.text
    return int(r.headers["x-ratelimit-remaining"])


def test_with_redis_down_the_processes_serve_degraded_and_recover_by_themselves(
    fleet: Fleet, redis: RedisServer, apis: tuple[httpx2.Client, httpx2.Client]
) -> None:
    for http in apis:
        assert _health(http, "/health")[1]["status"] == "healthy"
    _username, auth = _new_user(apis[0], deposit="1000")
    admin = login(apis[0], ADMIN)

    redis.stop()
    try:
        for http in apis:
            eventually(lambda http=http: _redis_check(http, "/health") == "fail", "/health names Redis as failing")
            status, body = _health(http, "/health")
            assert (status, body["status"]) == (200, "degraded")
            status, body = _health(http, "/health/ready")
            assert (status, body["status"], body["checks"]["redis"]["status"]) == (200, "degraded", "fail")

        # A light load on both: answers are 2xx or documented 4xx, never a 5xx, with rate headers.
        statuses: list[int] = []
        # Failed logins from an address of their own (three per process: under the guard's five).
        attacker = {"X-Forwarded-For": f"198.51.100.{uuid.uuid4().int % 250 + 1}"}
        guessed = f"nobody_{uuid.uuid4().hex[:8]}"
        for index in range(6):
            http = apis[index % 2]
            for r in (
                http.get("/api/v1/balance", headers=auth),
                http.post("/api/v1/balance/deposit", json={"amount": "10"}, headers=auth),
                http.get("/api/v1/inventory/assets"),
                http.post(
                    "/api/v1/orders",
                    json={"order_type": "market_buy", "asset_id": "ETH", "quantity": "0.001"},
                    headers=auth,
                ),
                http.post(
                    "/api/v1/auth/login", json={"username": guessed, "password": "wrong-" + PASSWORD}, headers=attacker
                ),
            ):
                statuses.append(r.status_code)
                assert r.status_code < 500, (r.status_code, r.text)
                assert "x-ratelimit-remaining" in r.headers
        assert sorted(set(statuses)) == [200, 201, 401]
        # Limits are never off: each process counts on its own, exactly, while Redis is away.
        _other, other_auth = _new_user(apis[1])
        counted = [_remaining(apis[1].get("/api/v1/balance", headers=other_auth)) for _ in range(3)]
        assert counted == [USER_LIMIT - 1, USER_LIMIT - 2, USER_LIMIT - 3]
    finally:
        redis.restart()

    for http in apis:
        eventually(lambda http=http: _health(http, "/health")[1]["status"] == "healthy", "/health is healthy again")
        assert _health(http, "/health/ready")[1]["status"] == "healthy"

    # Shared again: one user's count runs across both processes, and invalidations flow.
    _third, third_auth = _new_user(apis[0], deposit="100")

    def shared_count() -> bool:
        values = [_remaining(apis[n % 2].get("/api/v1/balance", headers=third_auth)) for n in range(2)]
        return values[1] == values[0] - 1

    eventually(shared_count, "both processes count the same user in Redis again")
    assert _accepted(apis[1], third_auth, "XRP")
    _set_active(apis[0], admin, "XRP", active=False)
    try:
        eventually(lambda: _refused_as_not_tradeable(apis[1], third_auth, "XRP"), "invalidation reaches API 2 again")
    finally:
        _set_active(apis[0], admin, "XRP", active=True)

    # Each process said once that it fell back, and once that it was back (not once per request).
    for name in ("api-1", "api-2"):
        log = (fleet.workdir / "logs" / f"{name}.log").read_text(errors="replace")
        events = [json.loads(line).get("event") for line in log.splitlines() if line.startswith("{")]
        assert events.count("shared_counters_unavailable") == 1, name
        assert events.count("shared_counters_restored") == 1, name
    # No money was lost or made while Redis was away: the books balance.
    audit = fleet.cnop("audit", check=False)
    assert audit.returncode == 0, audit.stdout.decode() + audit.stderr.decode()
