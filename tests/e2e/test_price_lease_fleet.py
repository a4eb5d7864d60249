"""One price stream for a fleet (issue 13, point 2), with real processes on 127.0.0.1.

Redis, one SQLite store, two `cnop serve` API processes (`CNOP_TRIGGER_ENGINE=false`) and two
`cnop serve worker` processes; the price source is `http:` against a local CoinGecko-compatible
server whose prices the test sets. Only the worker holding the price lease polls it and
publishes; every process quotes what the stream says. Killing that worker with SIGKILL hands the
lease to the other one, and every crossing order is still filled exactly once. Every "within" is
polled with a generous deadline, never timed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis

from tests.support.fake_prices import FakePrices, serve_fake_prices
from tests.support.fleet import Fleet, client, lease_holder, login, poll, quote, register
from tests.support.redis_server import RedisServer
from tests.support.wire import exact, read, usd

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer.start() as server:
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakePrices]:
    with serve_fake_prices() as prices:
        yield prices


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"lease{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, upstream: FakePrices, prefix: str
) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("price-fleet")
    env = {
        "CNOP_PRICE_SOURCE": f"http:{upstream.url}/api/v3",
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


def test_both_api_processes_quote_the_stream_a_worker_publishes(
    fleet: Fleet, upstream: FakePrices, shared: redis.Redis, prefix: str
) -> None:
    holder = poll(lambda: lease_holder(shared, prefix, fleet), lambda h: h is not None, "a worker holds the lease")
    assert holder is not None and holder[1] in fleet.worker_names()
    first, second = fleet.api_urls()
    with client(first) as one, client(second) as two:
        for price in ("61234.5", "59876.25", "60000"):
            upstream.set("BTC", Decimal(price))
            # Ticks keep coming (every 0.25 s); at some moment both processes show the same tick.
            expected = Decimal(price)
            poll(lambda: (quote(one, "BTC"), quote(two, "BTC")),
                 lambda q, expected=expected: q[0] == q[1] and q[0][0] == expected,  # type: ignore[misc]
                 f"both quote BTC {price}")  # fmt: skip


def test_kill_9_of_the_lease_holder_hands_publishing_over_and_every_crossing_order_fills_once(
    fleet: Fleet, upstream: FakePrices, shared: redis.Redis, prefix: str
) -> None:
    first, second = fleet.api_urls()
    with client(first) as one, client(second) as two:
        username = f"lease_{uuid.uuid4().hex[:10]}"
        register(one, username)
        auth = login(one, username)
        r = one.post("/api/v1/balance/deposit", json={"amount": "1000"}, headers=auth)
        assert r.status_code == 201, r.text
        upstream.set("BTC", Decimal("60000"))
        poll(lambda: quote(two, "BTC")[0], lambda p: p == Decimal("60000"), "BTC at 60000")
        orders = []
        for index in range(6):
            body = {"order_type": "limit_buy", "asset_id": "BTC", "quantity": "0.001", "price": "55000"}
            r = (one if index % 2 else two).post("/api/v1/orders", json=body, headers=auth)
            assert r.status_code == 201, r.text
            assert read(r)["data"]["status"] == "queued"
            orders.append(read(r)["data"]["order_id"])

        holder = lease_holder(shared, prefix, fleet)
        assert holder is not None and holder[1] in fleet.worker_names()
        old_token, victim = holder
        fleet.kill(victim)
        survivor = next(name for name in fleet.worker_names() if name != victim)

        taken = poll(lambda: lease_holder(shared, prefix, fleet),
                     lambda h: h is not None and h[1] == survivor, "the other worker takes the lease")  # fmt: skip
        assert taken is not None and taken[0] > old_token
        # Publishing resumed: a new price reaches both API processes, from the survivor's polls.
        upstream.set("BTC", Decimal("50000"))
        for http in (one, two):
            poll(lambda http=http: quote(http, "BTC")[0], lambda p: p == Decimal("50000"), "BTC at 50000")  # type: ignore[misc]
        entries = shared.xrevrange(f"{prefix}prices:stream", count=1)
        assert entries and entries[0][1]["f"].startswith(f"{taken[0]}:")

        for order_id in orders:
            filled = poll(lambda order_id=order_id: read(two.get(f"/api/v1/orders/{order_id}", headers=auth))["data"],  # type: ignore[misc]
                          lambda o: o["status"] == "completed", f"order {order_id} fills")  # fmt: skip
            assert exact(filled["executed_price"]) == Decimal("50000")
            assert usd(filled["total_amount"]) == Decimal("50.00")

        balance = read(one.get("/api/v1/balance", headers=auth))
        assert usd(balance["available_balance"]) == Decimal("700.00")  # 1000 - 6 x 50, once each
        assert usd(balance["held_balance"]) == Decimal("0")
        portfolio = read(one.get("/api/v1/portfolio", headers=auth))
        assert {a["asset_id"]: exact(a["quantity"]) for a in portfolio["assets"]} == {"BTC": Decimal("0.006")}
        ledger = read(one.get("/api/v1/balance/transactions", headers=auth, params={"limit": 100}))["transactions"]
        payments = [e for e in ledger if e["transaction_type"] == "order_payment"]
        assert len(payments) == 6

    audit = fleet.cnop("audit", check=False)
    assert audit.returncode == 0, audit.stdout.decode() + audit.stderr.decode()
