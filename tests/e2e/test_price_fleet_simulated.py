"""One price stream for a fleet on the `simulated` source (issue 13, point 2 and its proof).

Redis, one SQLite store, two `cnop serve` API processes (`CNOP_TRIGGER_ENGINE=false`) and two
`cnop serve worker` processes, with `CNOP_PRICE_SOURCE=simulated`: only the worker holding the
price lease runs the random walk and publishes; the API processes run no source at all. Both API
processes quote the same moving prices, the same 24 h figures and the same history; after a
`kill -9` of the lease holder the other worker takes the lease (a greater token) and the prices
keep moving on both. Every "within" is polled with a generous deadline, never timed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import redis

from tests.support.fleet import Fleet, client, lease_holder, poll, quote
from tests.support.redis_server import RedisServer
from tests.support.wire import read

pytestmark = pytest.mark.system

ASSET = "BTC"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer.start() as server:
        yield server


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"sim{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, prefix: str) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("simulated-fleet")
    env = {
        "CNOP_PRICE_SOURCE": "simulated",
        "CNOP_PRICE_TICK_SECONDS": "0.25",
        "CNOP_PRICE_LEASE_SECONDS": "1.5",
        "CNOP_RATE_LIMIT_PER_IP": "100000/minute",
        "CNOP_RATE_LIMIT_PER_USER": "100000/minute",
        "CNOP_REDIS_PREFIX": prefix,
    }
    with Fleet(workdir, f"sqlite:///{workdir / 'fleet.db'}", redis_server.url, extra_env=env) as running:
        yield running


@pytest.fixture
def shared(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield connection
    connection.close()


def detail(http: httpx2.Client) -> dict[str, Any]:
    r = http.get(f"/api/v1/inventory/assets/{ASSET}")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = read(r)["data"]
    return data


def same_ticks_on_both(one: httpx2.Client, two: httpx2.Client, count: int, after: str = "") -> list[tuple[Any, str]]:
    """`count` distinct ticks, later than `after`, each quoted identically by both processes."""
    seen: list[tuple[Any, str]] = []
    while len(seen) < count:
        last = seen[-1][1] if seen else after
        both = poll(lambda: (quote(one, ASSET), quote(two, ASSET)),
                    lambda q, last=last: q[0] == q[1] and q[0][1] > last,  # type: ignore[misc]
                    f"both processes quote one tick after {last!r}")  # fmt: skip
        seen.append(both[0])
    return seen


def test_both_api_processes_quote_the_same_moving_prices_figures_and_history(
    fleet: Fleet, shared: redis.Redis, prefix: str
) -> None:
    # Only the lease holder runs the random walk: the newest stream entry carries its token.
    def holder_and_newest() -> tuple[tuple[int, str] | None, list[Any]]:
        return lease_holder(shared, prefix, fleet), shared.xrevrange(f"{prefix}prices:stream", count=1)

    holder, newest = poll(holder_and_newest,
                          lambda v: v[0] is not None and bool(v[1]) and v[1][0][1]["f"].startswith(f"{v[0][0]}:"),
                          "the lease holder publishes")  # fmt: skip
    assert holder is not None and holder[1] in fleet.worker_names()
    first, second = fleet.api_urls()
    with client(first) as one, client(second) as two:
        ticks = same_ticks_on_both(one, two, 4)
        assert len({at for _price, at in ticks}) == 4  # the prices move, and both follow
        # The whole detail (24 h change, high, low, ...) is the same from both, at the same tick.
        poll(lambda: (detail(one), detail(two)), lambda d: d[0] == d[1], "the same asset detail from both")
        # The same history from both (a late tick may land between the two reads: poll).
        path = f"/api/v1/inventory/assets/{ASSET}/prices"
        poll(lambda: (read(one.get(path, params={"interval": "1m"})), read(two.get(path, params={"interval": "1m"}))),
             lambda h: h[0] == h[1] and len(h[0]["data"]["prices"]) >= 1, "the same history from both")  # fmt: skip


def test_kill_9_of_the_lease_holder_the_other_worker_keeps_the_prices_moving(
    fleet: Fleet, shared: redis.Redis, prefix: str
) -> None:
    holder = poll(lambda: lease_holder(shared, prefix, fleet), lambda h: h is not None, "a worker holds the lease")
    assert holder is not None and holder[1] in fleet.worker_names()
    old_token, victim = holder
    first, second = fleet.api_urls()
    with client(first) as one, client(second) as two:
        before = same_ticks_on_both(one, two, 1)[-1]
        fleet.kill(victim)
        survivor = next(name for name in fleet.worker_names() if name != victim)
        taken = poll(lambda: lease_holder(shared, prefix, fleet),
                     lambda h: h is not None and h[1] == survivor, "the other worker takes the lease")  # fmt: skip
        assert taken is not None and taken[0] > old_token
        # Publishing resumed from the survivor: new ticks, quoted identically by both processes.
        after = same_ticks_on_both(one, two, 3, after=before[1])
        assert len({at for _price, at in after}) == 3
        entries = shared.xrevrange(f"{prefix}prices:stream", count=1)
        assert entries and entries[0][1]["f"].startswith(f"{taken[0]}:")

    audit = fleet.cnop("audit", check=False)
    assert audit.returncode == 0, audit.stdout.decode() + audit.stderr.decode()
