"""Many processes, one truth (issue 13): a fleet on 127.0.0.1 sharing one store and one Redis.

Real processes (`tests.support.fleet.Fleet`): Redis, one SQLite file store, two `cnop serve` API
processes with `CNOP_TRIGGER_ENGINE=false` and two `cnop serve worker` processes, the `manual`
price source driven by an admin. Each test shows one thing the fleet gets right only because
the processes share their state. One fleet serves them all (starting one takes a good part of a
minute): the per-user limit, the login guard, revocation and asset invalidation across the two
API processes; order events across processes (a worker's fill reaches a stream held on the other
API process, and a client that reconnects elsewhere with `Last-Event-ID` gets exactly what it
missed); a worker killed mid-burst; and, last, Redis stopped for a while. The same outage for
two API processes alone, without workers, is `tests/system/test_shared_state_processes.py`.
Every "within" is polled with a generous deadline, never timed.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx2
import pytest

from tests.support.fleet import ADMIN, PASSWORD, Fleet, client, json_of, login, register
from tests.support.redis_server import RedisServer
from tests.support.sse import EventStream
from tests.support.wire import exact, read, usd

pytestmark = pytest.mark.system

USER_LIMIT = 200  # per user and minute, for the whole fleet (the other tests stay well below it)
DEADLINE = 10.0
STREAM_ID = re.compile(r"[0-9]+-[0-9]+")


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
        # Assets cached for an hour: only the invalidation channel can make a change show elsewhere.
        "CNOP_ASSET_CACHE_SECONDS": "3600",
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
        assert read(r)["code"] == "rate_limited"
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
        assert read(r)["code"] == "login_blocked"
        assert 1 <= int(r.headers["retry-after"]) <= 300
    # The block is that address's: the user still logs in from elsewhere, on either process.
    for http in apis:
        elsewhere = {"X-Forwarded-For": "192.0.2.10"}
        r = http.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD}, headers=elsewhere)
        assert r.status_code == 200, r.text


def _poll(fetch: Callable[[], Any], until: Callable[[Any], bool], deadline: float = DEADLINE) -> Any:
    """`fetch()` until `until(value)`; fails with the last value after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = fetch()
        if until(value):
            return value
        if time.monotonic() > end:
            raise AssertionError(f"condition not met in {deadline:g} s; last: {value}")
        time.sleep(0.5)


def test_a_logout_on_one_process_makes_the_token_fail_on_the_other(
    apis: tuple[httpx2.Client, httpx2.Client],
) -> None:
    _username, auth = _new_user(apis[0])
    for http in apis:
        assert http.get("/api/v1/auth/profile", headers=auth).status_code == 200  # verified (and remembered) on both
    assert apis[1].get("/api/v1/balance", headers=auth).status_code == 200  # known (and verified) there
    r = apis[0].post("/api/v1/auth/logout", headers=auth)
    assert r.status_code == 200, r.text
    # No waiting: the very next request to the other process is refused.
    r = apis[1].get("/api/v1/auth/profile", headers=auth)
    assert r.status_code == 401, r.text
    assert apis[0].get("/api/v1/auth/profile", headers=auth).status_code == 401
    for http in reversed(apis):
        r = http.get("/api/v1/balance", headers=auth)
        assert r.status_code == 401, r.text


def _set_active(http: httpx2.Client, admin: dict[str, str], asset: str, active: bool) -> None:
    r = http.post(f"/api/v1/admin/assets/{asset}/{'activate' if active else 'deactivate'}", headers=admin)
    assert r.status_code == 200, r.text
    assert read(r)["data"]["is_active"] is active


def _limit_buy_at_one_dollar(http: httpx2.Client, auth: dict[str, str], asset: str) -> httpx2.Response:
    body = {"order_type": "limit_buy", "asset_id": asset, "quantity": "1", "price": "1.00"}
    r = http.post("/api/v1/orders", json=body, headers=auth)
    assert r.status_code in (201, 422), r.text
    return r


def _not_tradeable(r: httpx2.Response) -> bool:
    return r.status_code == 422 and read(r)["code"] == "asset_not_tradeable"


def test_an_asset_deactivated_on_one_process_is_refused_on_the_other(
    apis: tuple[httpx2.Client, httpx2.Client],
) -> None:
    """Both processes cache assets for an hour here: only the invalidation channel can explain it.
    Market orders and resting (limit) orders alike are refused, then taken again."""
    _username, auth = _new_user(apis[1])
    _resting_user, resting_auth = _new_user(apis[1])
    admin = login(apis[0], ADMIN)
    for user in (auth, resting_auth):
        r = apis[1].post("/api/v1/balance/deposit", json={"amount": "1000"}, headers=user)
        assert r.status_code == 201, r.text
    order = {"order_type": "market_buy", "asset_id": "LTC", "quantity": "0.1"}
    assert apis[1].post("/api/v1/orders", json=order, headers=auth).status_code == 201  # API 2 knows LTC active
    assert _limit_buy_at_one_dollar(apis[1], resting_auth, "LTC").status_code == 201
    _set_active(apis[0], admin, "LTC", active=False)
    try:
        refused = _poll(
            lambda: apis[1].post("/api/v1/orders", json=order, headers=auth), lambda r: r.status_code != 201
        )
        assert refused.status_code == 422, refused.text
        assert read(refused)["code"] == "asset_not_tradeable"
        _poll(lambda: _limit_buy_at_one_dollar(apis[1], resting_auth, "LTC"), _not_tradeable)
    finally:
        _set_active(apis[0], admin, "LTC", active=True)
    _poll(lambda: apis[1].post("/api/v1/orders", json=order, headers=auth), lambda r: r.status_code == 201)
    _poll(lambda: _limit_buy_at_one_dollar(apis[1], resting_auth, "LTC"), lambda r: r.status_code == 201)
    orders = read(apis[1].get("/api/v1/orders", headers=auth))["data"]
    cash = usd(read(apis[1].get("/api/v1/balance", headers=auth))["available_balance"])
    assert cash == Decimal("1000") - sum((usd(o["total_amount"]) for o in orders), Decimal("0"))


def _market_buy(http: httpx2.Client, auth: dict[str, str], asset: str = "DOGE", quantity: str = "10") -> dict[str, Any]:
    r = http.post("/api/v1/orders", json={"order_type": "market_buy", "asset_id": asset, "quantity": quantity},
                  headers=auth)  # fmt: skip
    assert r.status_code == 201, r.text
    order: dict[str, Any] = read(r)["data"]
    assert order["status"] == "completed"
    return order


def _of(order: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == "order.completed" and e["data"]["order_id"] == order["order_id"]


def test_order_events_reach_a_stream_held_by_the_other_process_and_resume_on_either(
    fleet: Fleet, apis: tuple[httpx2.Client, httpx2.Client]
) -> None:
    _username, auth = _new_user(apis[0])
    assert apis[0].post("/api/v1/balance/deposit", json={"amount": "1000"}, headers=auth).status_code == 201
    first_url, second_url = fleet.api_urls()
    with EventStream(second_url, auth) as held_on_two:
        first = _market_buy(apis[0], auth)
        seen = held_on_two.wait_for(_of(first), DEADLINE)
        assert seen["data"] == first
    last_id = seen["id"]
    # Disconnected: two more orders (one through each process), then resume on API 1.
    missed = [_market_buy(apis[0], auth), _market_buy(apis[1], auth)]
    with EventStream(first_url, auth, last_event_id=last_id) as resumed:
        for order in missed:
            resumed.wait_for(_of(order), DEADLINE)
        third = _market_buy(apis[1], auth)  # and it goes on live
        resumed.wait_for(_of(third), DEADLINE)
        events = resumed.order_events()
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), ids  # each once
    completed = [e["data"]["order_id"] for e in events if e["event"] == "order.completed"]
    assert completed == [o["order_id"] for o in [*missed, third]]  # exactly the missed ones, in order
    assert all(e["data"]["order_id"] != first["order_id"] for e in events)


def _quote(http: httpx2.Client, asset: str) -> Decimal:
    r = http.get(f"/api/v1/inventory/assets/{asset}")
    assert r.status_code == 200, r.text
    return exact(read(r)["data"]["price_usd"])


def _set_price(http: httpx2.Client, admin: dict[str, str], asset: str, price: str) -> None:
    r = http.post("/api/v1/admin/prices", json={"asset_id": asset, "price": price}, headers=admin)
    assert r.status_code == 200, r.text


SLOW_DEADLINE = 60.0  # a worker's fill, a quote on every process


class Market:
    """The admin's hand on the `manual` price source, through one API process or the other."""

    def __init__(self, apis: list[httpx2.Client]) -> None:
        self.apis = apis
        self.admin = login(apis[0], ADMIN)

    def set(self, asset: str, price: str, via: int = 0) -> None:
        _set_price(self.apis[via], self.admin, asset, price)

    def move(self, asset: str, price: str, via: int = 0) -> None:
        """Set the price and wait until both API processes quote it."""
        self.set(asset, price, via)
        for http in self.apis:
            _poll(lambda http=http: _quote(http, asset), lambda quoted: quoted == Decimal(price), SLOW_DEADLINE)


def _limit_buy_btc(http: httpx2.Client, auth: dict[str, str], price: str) -> dict[str, Any]:
    body = {"order_type": "limit_buy", "asset_id": "BTC", "quantity": "0.01", "price": price}
    order: dict[str, Any] = json_of(http.post("/api/v1/orders", json=body, headers=auth))["data"]
    assert order["status"] == "queued", order
    return order


def _filled(http: httpx2.Client, auth: dict[str, str], order_id: str) -> dict[str, Any]:
    # `_poll` pauses half a second between reads: within the user's limit however long a fill takes.
    filled: dict[str, Any] = _poll(
        lambda: json_of(http.get(f"/api/v1/orders/{order_id}", headers=auth))["data"],
        lambda order: order["status"] == "completed",
        SLOW_DEADLINE,
    )
    return filled


def _position(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


def test_a_workers_fill_reaches_a_stream_on_another_api_and_resumes_on_the_first(fleet: Fleet) -> None:
    """An order placed through API 1 and filled by a worker produces `order.completed` on a stream
    held on API 2; a client that disconnects, lets two more fills happen and reconnects to API 1
    with `Last-Event-ID` receives exactly the events it missed, once each, in order (a marker event
    published after them proves nothing else, and nothing twice, comes first)."""
    api1_url, api2_url = fleet.api_urls()
    with client(api1_url) as api1, client(api2_url) as api2:
        market = Market([api1, api2])
        username = f"events_{uuid.uuid4().hex[:10]}"
        register(api1, username)
        auth = login(api1, username)
        json_of(api1.post("/api/v1/balance/deposit", json={"amount": "10000"}, headers=auth))
        market.move("BTC", "50000")

        # The stream is held on API 2; the order goes through API 1; a worker fills it.
        with EventStream(api2_url, auth) as stream:
            first = _limit_buy_btc(api1, auth, "49000")
            queued = stream.wait_for(
                lambda e: e["event"] == "order.queued" and e["data"]["order_id"] == first["order_id"]
            )
            assert queued["data"] == first
            market.set("BTC", "48000", via=1)
            filled = _filled(api1, auth, first["order_id"])
            assert exact(filled["executed_price"]) == Decimal("48000")
            completed = stream.wait_for(
                lambda e: e["event"] == "order.completed" and e["data"]["order_id"] == first["order_id"]
            )
            assert completed["data"] == filled
            assert [e["event"] for e in stream.order_events()] == ["order.queued", "order.completed"]
            last_seen = completed["id"]
        # Away: two more orders rest and are filled by a worker, one after the other.
        second = _limit_buy_btc(api1, auth, "47500")
        market.set("BTC", "47000")
        second_filled = _filled(api2, auth, second["order_id"])
        third = _limit_buy_btc(api2, auth, "46500")
        market.set("BTC", "46000", via=1)
        third_filled = _filled(api1, auth, third["order_id"])

        # Back, on API 1, with the last id seen on API 2: exactly what was missed, once, in order.
        with EventStream(api1_url, auth, last_event_id=last_seen) as resumed:
            marker = json_of(
                api2.post(
                    "/api/v1/orders",
                    json={"order_type": "market_buy", "asset_id": "BTC", "quantity": "0.001"},
                    headers=auth,
                )
            )["data"]
            resumed.wait_for(lambda e: e["data"]["order_id"] == marker["order_id"])
            got = resumed.order_events()
        assert [(e["event"], e["data"]) for e in got] == [
            ("order.queued", second),
            ("order.completed", second_filled),
            ("order.queued", third),
            ("order.completed", third_filled),
            ("order.completed", marker),
        ]
        ids = [last_seen, *(e["id"] for e in got)]
        assert all(STREAM_ID.fullmatch(i) for i in ids), ids
        assert sorted(ids, key=_position) == ids and len(set(ids)) == len(ids)

        # The money matches the fills, and the store's invariants hold.
        cash = usd(json_of(api2.get("/api/v1/balance", headers=auth))["available_balance"])
        spent = sum((usd(o["total_amount"]) for o in (filled, second_filled, third_filled, marker)), Decimal("0"))
        assert cash == Decimal("10000.00") - spent
    audit = fleet.cnop("audit", check=False)
    assert audit.returncode == 0, audit.stdout.decode() + audit.stderr.decode()


def test_both_processes_quote_the_same_price_after_each_admin_change(
    apis: tuple[httpx2.Client, httpx2.Client],
) -> None:
    admin = login(apis[0], ADMIN)
    for index, price in enumerate(["431.25", "407.5", "455"]):
        _set_price(apis[index % 2], admin, "BCH", price)  # on either process
        for http in apis:
            _poll(lambda: _quote(http, "BCH"), lambda quote: quote == Decimal(price))  # noqa: B023


def _asset_bodies(http: httpx2.Client, asset: str) -> tuple[bytes, bytes]:
    """The asset list and one asset's detail, as bytes (both are kept renderings on each process)."""
    listed = http.get("/api/v1/inventory/assets", params={"limit": 250, "active_only": "false"})
    detail = http.get(f"/api/v1/inventory/assets/{asset}")
    assert listed.status_code == 200 and detail.status_code == 200, (listed.text, detail.text)
    return listed.content, detail.content


def _listed(bodies: tuple[bytes, bytes], asset: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(bodies[0])["data"]
    return next(a for a in data if a["asset_id"] == asset)


def test_kept_asset_bodies_on_each_process_follow_changes_made_on_the_other(
    apis: tuple[httpx2.Client, httpx2.Client],
) -> None:
    """Each process keeps its rendered asset list and details; a tick on the shared price stream and an
    asset write announced on the invalidation channel (assets are cached for an hour here) replace
    them on both, and both then answer the same bytes."""
    admin = login(apis[0], ADMIN)
    for http in apis:
        _asset_bodies(http, "XLM")  # rendered and kept on both
    changes: list[tuple[Callable[[], None], Callable[[tuple[bytes, bytes]], bool]]] = [
        (
            lambda: _set_price(apis[1], admin, "XLM", "0.1234"),
            lambda b: _listed(b, "XLM")["price_usd"] == "0.1234" and json.loads(b[1])["data"]["price_usd"] == "0.1234",
        ),
        (
            lambda: _admin(apis[0], admin, "XLM", "deactivate"),
            lambda b: (
                _listed(b, "XLM")["is_active"] is False
                and json.loads(b[1])["data"]["availability_status"] == "unavailable"
            ),
        ),
        (
            lambda: _admin(apis[1], admin, "XLM", "activate"),
            lambda b: _listed(b, "XLM")["is_active"] is True and json.loads(b[1])["data"]["is_active"] is True,
        ),
    ]
    for change, shows in changes:
        change()
        seen = [_poll(lambda http=http: _asset_bodies(http, "XLM"), shows) for http in apis]  # type: ignore[misc]
        assert seen[0] == seen[1]  # the very same bytes on both processes


def _admin(http: httpx2.Client, admin: dict[str, str], asset: str, action: str) -> None:
    r = http.post(f"/api/v1/admin/assets/{asset}/{action}", headers=admin)
    assert r.status_code == 200, r.text


def test_a_workers_fill_after_an_admin_price_change_reaches_the_stream_on_the_other_process(
    fleet: Fleet, apis: tuple[httpx2.Client, httpx2.Client]
) -> None:
    """A limit order placed on API 1 rests (no API process runs the trigger engine); the admin moves
    the market through it on API 2; a worker fills it; the stream held on API 2 hears of it."""
    _username, auth = _new_user(apis[0])
    admin = login(apis[1], ADMIN)
    assert apis[0].post("/api/v1/balance/deposit", json={"amount": "1000"}, headers=auth).status_code == 201
    _set_price(apis[1], admin, "AVAX", "36")
    for http in apis:
        _poll(lambda: _quote(http, "AVAX"), lambda quote: quote == Decimal("36"))  # noqa: B023
    with EventStream(fleet.api_urls()[1], auth) as stream:
        r = apis[0].post("/api/v1/orders", json={"order_type": "limit_buy", "asset_id": "AVAX", "quantity": "2",
                                                 "price": "35"}, headers=auth)  # fmt: skip
        assert r.status_code == 201, r.text
        resting = read(r)["data"]
        assert resting["status"] == "queued"
        _set_price(apis[1], admin, "AVAX", "34.5")
        completed = stream.wait_for(
            lambda e: e["event"] == "order.completed" and e["data"]["order_id"] == resting["order_id"], DEADLINE
        )
    assert Decimal(completed["data"]["executed_price"]) <= Decimal("35")
    order = read(apis[1].get(f"/api/v1/orders/{resting['order_id']}", headers=auth))["data"]
    assert order == completed["data"]
    balance = read(apis[1].get("/api/v1/balance", headers=auth))
    assert usd(balance["held_balance"]) == Decimal("0")
    assert usd(balance["available_balance"]) == Decimal("1000") - usd(order["total_amount"])


CROSSING = {"SOL": "160", "LINK": "18", "DOT": "7", "NEAR": "7.2", "UNI": "10", "ATOM": "8"}


def test_kill_9_of_a_worker_mid_burst_of_crossing_prices_fills_every_order_once(
    fleet: Fleet, apis: tuple[httpx2.Client, httpx2.Client]
) -> None:
    """Resting orders on six assets; the admin moves each market through them in turn, and a worker
    is killed (SIGKILL) half-way: the other fills every order, each exactly once."""
    burst_admin = f"fleet_admin_{uuid.uuid4().hex[:6]}"  # its own per-user window
    fleet.cnop("user", "create", burst_admin, "--email", f"{burst_admin}@example.com", "--admin",
               "--password-stdin", stdin=PASSWORD.encode())  # fmt: skip
    admin = login(apis[1], burst_admin)
    _username, auth = _new_user(apis[0])
    assert apis[0].post("/api/v1/balance/deposit", json={"amount": "5000"}, headers=auth).status_code == 201
    for asset, price in CROSSING.items():
        _set_price(apis[1], admin, asset, price)
    for http in apis:
        _poll(lambda: {a: _quote(http, a) for a in CROSSING},  # noqa: B023
              lambda quotes: all(q == Decimal(CROSSING[a]) for a, q in quotes.items()))  # fmt: skip
    resting: dict[str, str] = {}  # order id -> asset
    for index, (asset, price) in enumerate([*CROSSING.items(), *CROSSING.items()]):
        limit = str(Decimal(price) * Decimal("0.95"))
        body = {"order_type": "limit_buy", "asset_id": asset, "quantity": "1", "price": limit}
        r = apis[index % 2].post("/api/v1/orders", json=body, headers=auth)
        assert r.status_code == 201, r.text
        assert read(r)["data"]["status"] == "queued"
        resting[read(r)["data"]["order_id"]] = asset

    victim = fleet.worker_names()[0]
    for index, (asset, price) in enumerate(CROSSING.items()):
        if index == len(CROSSING) // 2:
            fleet.kill(victim)
        _set_price(apis[index % 2], admin, asset, str(Decimal(price) * Decimal("0.9")))

    def still_open() -> list[dict[str, Any]]:
        time.sleep(0.5)  # with `_poll`'s pause: about one listing a second, within the user's limit
        r = apis[0].get("/api/v1/orders", params={"status": "open", "limit": 100}, headers=auth)
        assert r.status_code == 200, r.text
        data: list[dict[str, Any]] = read(r)["data"]
        return data

    _poll(still_open, lambda left: not left, 2 * DEADLINE)
    orders = read(apis[1].get("/api/v1/orders", params={"limit": 100}, headers=auth))["data"]
    assert {o["order_id"] for o in orders} == set(resting)
    assert all(o["status"] == "completed" for o in orders)
    for order in orders:
        assert exact(order["executed_price"]) == Decimal(CROSSING[resting[order["order_id"]]]) * Decimal("0.9")
    ledger = read(apis[0].get("/api/v1/balance/transactions", params={"limit": 100}, headers=auth))["transactions"]
    paid = sorted(e["order_id"] for e in ledger if e["transaction_type"] == "order_payment")
    assert paid == sorted(resting)  # one payment per order: none filled twice
    balance = read(apis[0].get("/api/v1/balance", headers=auth))
    spent = sum((usd(o["total_amount"]) for o in orders), Decimal("0"))
    assert usd(balance["available_balance"]) == Decimal("5000") - spent
    assert usd(balance["held_balance"]) == Decimal("0")
    holdings = {a["asset_id"]: exact(a["quantity"]) for a in read(apis[1].get("/api/v1/portfolio", headers=auth))["assets"]}  # fmt: skip
    assert holdings == {asset: Decimal("2") for asset in CROSSING}

    fleet.start_member(fleet.member(victim))
    fleet.wait_ready([fleet.member(victim)])
    audit = fleet.cnop("audit", check=False)
    assert audit.returncode == 0, audit.stdout.decode() + audit.stderr.decode()


# --- last: Redis goes away for a while (the module's Redis is this module's own) -------------------

OUTAGE_SECONDS = 10.0
DOCUMENTED_503 = {"price_unavailable", "service_unavailable"}


def _health(http: httpx2.Client) -> dict[str, Any]:
    r = http.get("/health")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = read(r)
    return body


def test_redis_stopped_for_a_while_under_light_load(
    fleet: Fleet, redis: RedisServer, apis: tuple[httpx2.Client, httpx2.Client]
) -> None:
    """No 5xx but documented 503s while Redis is away, /health says degraded, and the fleet
    recovers by itself: events flow again, also the ones made while Redis was away."""
    _username, auth = _new_user(apis[0])
    assert apis[0].post("/api/v1/balance/deposit", json={"amount": "5000"}, headers=auth).status_code == 201
    assert all(_health(http)["status"] == "healthy" for http in apis)
    first_url, second_url = fleet.api_urls()
    with EventStream(second_url, auth) as before:
        last_id = before.wait_for(_of(_market_buy(apis[0], auth)), DEADLINE)["id"]

    answers: list[tuple[float, httpx2.Response]] = []  # (when it was sent, the answer)
    stop = threading.Event()

    def light_load() -> None:
        with client(first_url) as one, client(second_url) as two:
            for index in itertools.count():
                if stop.is_set():
                    return
                http = (one, two)[index % 2]
                order = {"order_type": "market_buy", "asset_id": "DOGE", "quantity": "10"}
                # One order and one public read a second: light, and within the per-user limit.
                answers.append((time.monotonic(), http.post("/api/v1/orders", json=order, headers=auth)))
                answers.append((time.monotonic(), http.get("/api/v1/inventory/assets/DOGE")))
                time.sleep(1.0)

    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(light_load)
        try:
            time.sleep(1)
            redis.stop()
            stopped = time.monotonic()
            for http in apis:
                health = _poll(lambda: _health(http), lambda h: h["status"] == "degraded")  # noqa: B023
                assert health["checks"]["redis"]["status"] == "fail", health
            time.sleep(OUTAGE_SECONDS)
            during = len(answers)
            redis.restart()
            for http in apis:
                _poll(lambda: _health(http), lambda h: h["status"] == "healthy")  # noqa: B023
            _poll(lambda: len(answers), lambda n: n >= during + 4)  # some load after the return too
        finally:
            stop.set()
            load.result()

    unexpected = [
        (r.status_code, r.text)
        for _, r in answers
        if r.status_code >= 500 and not (r.status_code == 503 and read(r).get("code") in DOCUMENTED_503)
    ]
    assert not unexpected, unexpected
    made = [read(r)["data"] for _, r in answers if r.request.method == "POST" and r.status_code == 201]
    since_stop = [read(r)["data"] for at, r in answers if at > stopped and r.request.method == "POST" and r.status_code == 201]  # fmt: skip
    assert since_stop, [r.status_code for _, r in answers]

    # Events flow again: every order made since Redis went away (the ones made while it was away
    # were kept and sent when it came back) is on the user's stream, after the last event seen
    # before the outage, and live ones follow. (The restarted Redis is empty: what it held before
    # is gone with it, as with any Redis that keeps nothing on disk.) The client is what a browser
    # is: if the stream ends with a retry hint, it connects again with the last id it received.
    with EventStream(first_url, auth, last_event_id=last_id, reconnect=True) as after:
        for order in since_stop:
            after.wait_for(_of(order), 2 * DEADLINE)
        live = _market_buy(apis[1], auth)
        after.wait_for(_of(live), DEADLINE)
    # Money: the deposit less every order, nothing lost, and the store is consistent.
    orders = read(apis[0].get("/api/v1/orders", params={"limit": 100}, headers=auth))["data"]
    assert {o["order_id"] for o in orders} >= {o["order_id"] for o in [*made, live]}
    cash = usd(read(apis[1].get("/api/v1/balance", headers=auth))["available_balance"])
    assert cash == Decimal("5000") - sum((usd(o["total_amount"]) for o in orders), Decimal("0"))
    audit = fleet.cnop("audit", check=False)
    assert audit.returncode == 0, audit.stdout.decode() + audit.stderr.decode()
