"""Many processes, one truth (issue 13): a fleet on 127.0.0.1 sharing one store and one Redis.

Real processes (`tests.support.fleet.Fleet`): Redis, one SQLite file store, two `cnop serve` API
processes with `CNOP_TRIGGER_ENGINE=false` and two `cnop serve worker` processes, the `manual`
price source driven by an admin. Each test shows one thing the fleet gets right only because
the processes share their state; the other helpers' focused tests prove the pieces one by one,
this is the integrated proof. Every "within" is polled with a generous deadline, never timed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx2
import pytest

from tests.support.fleet import PASSWORD, Fleet, client, login, register
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.system

USER_LIMIT = 40  # per user and minute, for the whole fleet


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer.start() as server:
        yield server


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fleet")
    env = {
        "CNOP_PRICE_SOURCE": "manual",
        "CNOP_MAX_PRICE_AGE_SECONDS": "86400",
        "CNOP_RATE_LIMIT_PER_IP": "100000/minute",
        "CNOP_RATE_LIMIT_PER_USER": f"{USER_LIMIT}/minute",
        "CNOP_REDIS_PREFIX": f"fleet{uuid.uuid4().hex[:8]}:",
    }
    with Fleet(workdir, f"sqlite:///{workdir / 'fleet.db'}", redis.url, extra_env=env) as running:
        yield running


@pytest.fixture
def apis(fleet: Fleet) -> Iterator[tuple[httpx2.Client, httpx2.Client]]:
    first, second = fleet.api_urls()
    with client(first) as one, client(second) as two:
        yield one, two


def _new_user(http: httpx2.Client) -> tuple[str, dict[str, str]]:
    username = f"fleet_{uuid.uuid4().hex[:10]}"
    register(http, username)
    return username, login(http, username)


def test_a_per_user_limit_holds_for_the_whole_fleet(apis: tuple[httpx2.Client, httpx2.Client]) -> None:
    """N requests a minute in total across both API processes, not 2N; the headers count them all."""
    _username, auth = _new_user(apis[0])
    remaining = []
    for index in range(USER_LIMIT):
        r = apis[index % 2].get("/api/v1/balance", headers=auth)
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit"] == str(USER_LIMIT)
        remaining.append(int(r.headers["x-ratelimit-remaining"]))
    assert remaining == list(range(USER_LIMIT - 1, -1, -1))
    for http in apis:
        r = http.get("/api/v1/balance", headers=auth)
        assert r.status_code == 429, r.text
        assert r.json()["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1
    # Another user is not limited by this one's count.
    _other, other_auth = _new_user(apis[1])
    assert apis[0].get("/api/v1/balance", headers=other_auth).status_code == 200


def test_failed_logins_spread_over_both_processes_block_the_ip_on_both(
    apis: tuple[httpx2.Client, httpx2.Client],
) -> None:
    """Five failed logins from one address, alternating between the processes, block it on both."""
    username, _auth = _new_user(apis[0])
    attacker = {"X-Forwarded-For": f"198.51.100.{uuid.uuid4().int % 250 + 1}"}
    for index in range(5):
        # Guesses at other accounts (so the per-account throttle of this one stays out of it).
        guess = {"username": f"{username}_{index}", "password": "wrong-" + PASSWORD}
        r = apis[index % 2].post("/api/v1/auth/login", json=guess, headers=attacker)
        assert r.status_code == 401, r.text
    for http in apis:
        # Blocked even with the right password, on either process.
        r = http.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD}, headers=attacker)
        assert r.status_code == 403, r.text
        assert int(r.headers["retry-after"]) >= 1
    # The block is that address's: the user still logs in from elsewhere, on either process.
    for http in apis:
        elsewhere = {"X-Forwarded-For": "192.0.2.10"}
        r = http.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD}, headers=elsewhere)
        assert r.status_code == 200, r.text
