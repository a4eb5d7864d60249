"""Events across processes (issue 13, point 4): a worker's fill reaches a stream held anywhere.

Real processes on 127.0.0.1 (`tests.support.fleet.Fleet`): Redis, one SQLite file store, two
`cnop serve` API processes with `CNOP_TRIGGER_ENGINE=false` and two `cnop serve worker`
processes. Prices are the `manual` source driven by an admin through either API process (the
change goes out on the shared price stream, which every process, workers included, follows),
so the test moves the market across an order's limit and one of the workers fills it. Shown:

- an order placed through API 1 and filled by a worker produces `order.completed` on an SSE
  stream held on API 2;
- a client that disconnects, lets two more fills happen, and reconnects to API 1 with
  `Last-Event-ID` receives exactly the events it missed, once each, in order (a marker event
  published after them proves nothing else, and nothing twice, comes first).

Every "within" is polled with a generous deadline, never timed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx2
import pytest

from tests.support.cloud import poll
from tests.support.fleet import ADMIN, Fleet, client, json_of, login, register
from tests.support.redis_server import RedisServer
from tests.support.sse import EventStream

pytestmark = pytest.mark.system

STREAM_ID = re.compile(r"[0-9]+-[0-9]+")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("events-fleet")
    env = {
        "CNOP_PRICE_SOURCE": "manual",
        "CNOP_MAX_PRICE_AGE_SECONDS": "86400",
        "CNOP_RATE_LIMIT_PER_IP": "100000/minute",
        "CNOP_RATE_LIMIT_PER_USER": "100000/minute",
        "CNOP_REDIS_PREFIX": f"events{uuid.uuid4().hex[:8]}:",
    }
    with (
        RedisServer.start() as redis,
        Fleet(workdir, f"sqlite:///{workdir / 'fleet.db'}", redis.url, extra_env=env) as running,
    ):
        yield running


def _quote(http: httpx2.Client, asset: str) -> Decimal:
    return Decimal(str(json_of(http.get(f"/api/v1/inventory/assets/{asset}"))["data"]["price_usd"]))


class Market:
    """The admin's hand on the `manual` price source, through one API process or the other."""

    def __init__(self, apis: list[httpx2.Client]) -> None:
        self.apis = apis
        self.admin = login(apis[0], ADMIN)

    def set(self, asset: str, price: str, via: int = 0) -> None:
        body = {"asset_id": asset, "price": price}
        json_of(self.apis[via].post("/api/v1/admin/prices", json=body, headers=self.admin))

    def move(self, asset: str, price: str, via: int = 0) -> None:
        """Set the price and wait until both API processes quote it."""
        self.set(asset, price, via)
        for http in self.apis:
            poll(lambda http=http: _quote(http, asset), lambda quoted: quoted == Decimal(price))


def _limit_buy(http: httpx2.Client, auth: dict[str, str], price: str) -> dict[str, Any]:
    body = {"order_type": "limit_buy", "asset_id": "BTC", "quantity": "0.01", "price": price}
    order = json_of(http.post("/api/v1/orders", json=body, headers=auth))["data"]
    assert order["status"] == "queued", order
    return order


def _filled(http: httpx2.Client, auth: dict[str, str], order_id: str) -> dict[str, Any]:
    return poll(
        lambda: json_of(http.get(f"/api/v1/orders/{order_id}", headers=auth))["data"],
        lambda order: order["status"] == "completed",
    )


def _position(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


def test_a_workers_fill_reaches_a_stream_on_another_api_and_resumes_on_the_first(fleet: Fleet) -> None:
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
            first = _limit_buy(api1, auth, "49000")
            queued = stream.wait_for(
                lambda e: e["event"] == "order.queued" and e["data"]["order_id"] == first["order_id"]
            )
            assert queued["data"] == first
            market.set("BTC", "48000", via=1)
            filled = _filled(api1, auth, first["order_id"])
            assert Decimal(str(filled["executed_price"])) == Decimal("48000")
            completed = stream.wait_for(
                lambda e: e["event"] == "order.completed" and e["data"]["order_id"] == first["order_id"]
            )
            assert completed["data"] == filled
            assert [e["event"] for e in stream.order_events()] == ["order.queued", "order.completed"]
            last_seen = completed["id"]
        # Away: two more orders rest and are filled by a worker, one after the other.
        second = _limit_buy(api1, auth, "47500")
        market.set("BTC", "47000")
        second_filled = _filled(api2, auth, second["order_id"])
        third = _limit_buy(api2, auth, "46500")
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
        cash = Decimal(str(json_of(api2.get("/api/v1/balance", headers=auth))["available_balance"]))
        spent = sum(
            (Decimal(str(o["total_amount"])) for o in (filled, second_filled, third_filled, marker)), Decimal("0")
        )
        assert cash == Decimal("10000.00") - spent
    audit = fleet.cnop("audit", check=False)
    assert audit.returncode == 0, audit.stdout.decode() + audit.stderr.decode()
