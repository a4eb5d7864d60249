"""The fleet of `tests/e2e/test_fleet.py` on DynamoDB Local instead of a SQLite file (issue 13).

Two `cnop serve` API processes (`CNOP_TRIGGER_ENGINE=false`) and two workers on the session's
DynamoDB Local (tables of their own prefix) and one Redis: what depends on the store as well as
on Redis — an order's events reaching a stream held by the other process, a logout refused by
the other process, an asset deactivated on one refused on the other — and `cnop audit` after.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import httpx2
import pytest

from tests.support.fleet import ADMIN, Fleet, client, login, register
from tests.support.sse import EventStream
from tests.support.wire import read

pytestmark = pytest.mark.system

DEADLINE = 10.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, dynamodb_endpoint: str, redis_url: str) -> Iterator[Fleet]:
    env = {
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "CNOP_DYNAMODB_TABLE_PREFIX": f"fleet{uuid.uuid4().hex[:8]}",
        "CNOP_REDIS_PREFIX": f"fleet{uuid.uuid4().hex[:8]}:",
        "CNOP_PRICE_SOURCE": "manual",
        "CNOP_MAX_PRICE_AGE_SECONDS": "86400",
        "CNOP_RATE_LIMIT_PER_IP": "100000/minute",
        "CNOP_RATE_LIMIT_PER_USER": "100000/minute",
        "CNOP_ASSET_CACHE_SECONDS": "3600",
    }
    with Fleet(tmp_path_factory.mktemp("fleet-dynamodb"), "dynamodb", redis_url, extra_env=env) as running:
        yield running


def test_the_fleet_on_dynamodb(fleet: Fleet) -> None:
    first_url, second_url = fleet.api_urls()
    with client(first_url) as one, client(second_url) as two:
        username = f"fleet_{uuid.uuid4().hex[:10]}"
        register(one, username)
        auth = login(two, username)
        r = one.post("/api/v1/balance/deposit", json={"amount": "1000"}, headers=auth)
        assert r.status_code == 201, r.text

        # An order placed on API 1 reaches the user's stream held by API 2.
        with EventStream(second_url, auth) as stream:
            order = {"order_type": "market_buy", "asset_id": "DOGE", "quantity": "10"}
            r = one.post("/api/v1/orders", json=order, headers=auth)
            assert r.status_code == 201, r.text
            placed = read(r)["data"]
            seen = stream.wait_for(
                lambda e: e["event"] == "order.completed" and e["data"]["order_id"] == placed["order_id"], DEADLINE
            )
            assert seen["data"] == placed

        # An asset deactivated on API 1 is refused on API 2 (its cache lasts an hour here).
        admin = login(one, ADMIN)
        assert two.post("/api/v1/orders", json=order, headers=auth).status_code == 201
        assert one.post("/api/v1/admin/assets/DOGE/deactivate", headers=admin).status_code == 200
        try:
            refused = _eventually(lambda: two.post("/api/v1/orders", json=order, headers=auth))
            assert read(refused)["code"] == "asset_not_tradeable", refused.text
        finally:
            assert one.post("/api/v1/admin/assets/DOGE/activate", headers=admin).status_code == 200

        # A logout on API 1: the token fails on API 2 at once.
        assert one.post("/api/v1/auth/logout", headers=auth).status_code == 200
        assert two.get("/api/v1/balance", headers=auth).status_code == 401

    audit = fleet.cnop("audit", check=False)
    assert audit.returncode == 0, audit.stdout.decode() + audit.stderr.decode()


def _eventually(send: Callable[[], httpx2.Response]) -> httpx2.Response:
    """`send()` until it is refused (422); fails if it is still accepted after the deadline."""
    end = time.monotonic() + DEADLINE
    while True:
        r = send()
        if r.status_code != 201:
            assert r.status_code == 422, r.text
            return r
        assert time.monotonic() < end, "still accepted"
        time.sleep(0.5)
