"""The cloud shape as real processes on 127.0.0.1: DynamoDB Local, Redis, two gateways, user,
order, inventory, insights and two workers (`cnop.dev.CloudOnOneMachine`, what `cnop dev cloud` runs).

One black-box journey through a gateway (a worker's fill reaching the user's event stream through
Redis), the token rules across processes, one request id in
the gateway's and the service's logs, and a kill -9 of the order service during a burst of
orders (the gateway's breaker and retries, and idempotent orders, keep every answer honest).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cnop.common.security.token_manager import write_ed25519_key_pair
from cnop.dev import CloudOnOneMachine
from tests.support.cloud import (
    DEADLINE,
    all_pages,
    breaker_view,
    gateway_metrics,
    metric_samples,
    new_user,
    poll,
    running_cloud,
)
from tests.support.cloud import client as gateway_client
from tests.support.fake_prices import FakePrices, serve_fake_prices
from tests.support.sse import EventStream
from tests.support.wire import exact, read, usd

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def prices() -> Iterator[FakePrices]:
    with serve_fake_prices() as served:
        yield served


@pytest.fixture(scope="module")
def cloud(
    tmp_path_factory: pytest.TempPathFactory, dynamodb_endpoint: str, prices: FakePrices, redis_url: str
) -> Iterator[CloudOnOneMachine]:
    # An order whose process died before applying it holds its client_order_id for the lease:
    # a short one keeps the kill test's retries short.
    env = {"CNOP_IDEMPOTENCY_LEASE_SECONDS": "5"}
    with running_cloud(tmp_path_factory.mktemp("cloud"), dynamodb_endpoint, prices, env, redis_url=redis_url) as shape:
        yield shape


def _price(client: httpx2.Client, asset: str) -> Decimal:
    r = client.get(f"/api/v1/inventory/assets/{asset}")
    assert r.status_code == 200, r.text
    return exact(read(r)["data"]["price_usd"])


def test_a_journey_through_a_gateway(cloud: CloudOnOneMachine, prices: FakePrices) -> None:
    with gateway_client(cloud) as client, gateway_client(cloud, 1) as other_gateway:
        username, auth = new_user(client)
        r = client.post("/api/v1/balance/deposit", json={"amount": "5000"}, headers=auth)
        assert r.status_code == 201, r.text
        assert usd(read(r)["balance"]) == Decimal("5000.00")
        r = client.post("/api/v1/balance/withdraw", json={"amount": "500"}, headers=auth)
        assert r.status_code == 201, r.text
        assert usd(read(r)["balance"]) == Decimal("4500.00")

        # Market buy and sell (through the other gateway: either one serves any request).
        r = other_gateway.post("/api/v1/orders", json={"order_type": "market_buy", "asset_id": "ETH",
                                                       "quantity": "0.5", "client_order_id": "buy-1"}, headers=auth)  # fmt: skip
        assert r.status_code == 201, r.text
        bought = read(r)["data"]
        assert bought["status"] == "completed"
        r = client.post("/api/v1/orders", json={"order_type": "market_sell", "asset_id": "ETH",
                                                "quantity": "0.2"}, headers=auth)  # fmt: skip
        assert r.status_code == 201, r.text
        sold = read(r)["data"]
        assert sold["status"] == "completed"

        # A limit buy below the market rests; when the market falls through it, a worker fills it,
        # and the user's event stream (held by the order service, through the gateway) hears of it.
        prices.set("BTC", Decimal("50000"))
        poll(lambda: _price(client, "BTC"), lambda price: price == Decimal("50000"))
        with EventStream(cloud.gateway_urls()[0], auth) as events:
            r = client.post("/api/v1/orders", json={"order_type": "limit_buy", "asset_id": "BTC", "quantity": "0.01",
                                                    "price": "49000"}, headers=auth)  # fmt: skip
            assert r.status_code == 201, r.text
            resting = read(r)["data"]
            assert resting["status"] == "queued"
            prices.set("BTC", Decimal("48000"))
            filled = poll(lambda: read(client.get(f"/api/v1/orders/{resting['order_id']}", headers=auth))["data"],
                           lambda order: order["status"] == "completed")  # fmt: skip
            assert exact(filled["executed_price"]) == Decimal("48000")
            assert usd(filled["total_amount"]) == Decimal("480.00")
            completed = events.wait_for(
                lambda e: e["event"] == "order.completed" and e["data"]["order_id"] == resting["order_id"]
            )
            assert completed["data"] == filled
            kinds = [e["event"] for e in events.order_events() if e["data"]["order_id"] == resting["order_id"]]
            assert kinds == ["order.queued", "order.completed"]

        # Another far below the market, cancelled: its hold comes back.
        r = client.post("/api/v1/orders", json={"order_type": "limit_buy", "asset_id": "BTC", "quantity": "0.01",
                                                "price": "1.00"}, headers=auth)  # fmt: skip
        assert r.status_code == 201, r.text
        cancel_me = read(r)["data"]
        held = usd(read(client.get("/api/v1/balance", headers=auth))["held_balance"])
        assert held == Decimal("0.01")
        r = client.delete(f"/api/v1/orders/{cancel_me['order_id']}", headers=auth)
        assert r.status_code == 200, r.text
        assert read(r)["data"]["status"] == "cancelled"

        balance = read(client.get("/api/v1/balance", headers=auth))
        assert usd(balance["held_balance"]) == Decimal("0")
        expected_cash = (
            Decimal("4500.00") - usd(bought["total_amount"]) + usd(sold["total_amount"]) - usd(filled["total_amount"])
        )
        assert usd(balance["available_balance"]) == expected_cash

        portfolio = client.get("/api/v1/portfolio", headers=auth)
        assert portfolio.status_code == 200, portfolio.text
        quantities = {a["asset_id"]: exact(a["quantity"]) for a in read(portfolio)["assets"]}
        assert quantities == {"ETH": Decimal("0.3"), "BTC": Decimal("0.01")}
        insights = client.get("/api/v1/insights/portfolio", headers=auth)
        assert insights.status_code == 200, insights.text
        assert read(insights)["data"]["summary"]

        orders = read(client.get("/api/v1/orders", headers=auth))["data"]
        assert {o["status"] for o in orders} == {"completed", "cancelled"}
        assert len(orders) == 4

    audit = cloud.cnop("audit", check=False)
    assert audit.returncode == 0, audit.stdout.decode() + audit.stderr.decode()


def test_one_request_id_through_the_gateway_and_the_service_logs(cloud: CloudOnOneMachine) -> None:
    request_id = f"e2e-{uuid.uuid4().hex}"
    with gateway_client(cloud) as client:
        _username, auth = new_user(client)
        r = client.get("/api/v1/orders", headers={**auth, "X-Request-ID": request_id})
        assert r.status_code == 200
        assert r.headers["x-request-id"] == request_id

    def lines(name: str) -> list[dict[str, Any]]:
        text = (cloud.workdir / "logs" / f"{name}.log").read_text(errors="replace")
        found = []
        for line in text.splitlines():
            if request_id in line:
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
        return found

    gateway = poll(lambda: lines("gateway-1"), bool, 10)
    service = poll(lambda: lines("order"), bool, 10)
    assert all(line["request_id"] == request_id for line in gateway + service)
    assert any(line.get("event") == "request" for line in service)


def test_tokens_signed_by_the_user_service_verify_everywhere_and_no_other_token_does(
    cloud: CloudOnOneMachine, tmp_path: Path
) -> None:
    with gateway_client(cloud) as client:
        _username, auth = new_user(client)
        token = auth["Authorization"].removeprefix("Bearer ")
        kid = jwt.get_unverified_header(token)["kid"]
        jwks = read(client.get("/.well-known/jwks.json"))
        assert [k["kid"] for k in jwks["keys"]] == [kid]
        # Every service verifies it itself: called directly, bypassing the gateway.
        for name, path in [("user", "/api/v1/balance"), ("order", "/api/v1/orders"),
                           ("insights", "/api/v1/insights/portfolio"), ("user", "/api/v1/portfolio")]:  # fmt: skip
            r = httpx2.get(cloud.member(name).url + path, headers=auth, trust_env=False, timeout=30)
            assert r.status_code == 200, (name, r.text)

        # A token with the same claims signed by another key, and an HS256 one: refused by the
        # gateway and by each service directly.
        claims = jwt.decode(token, options={"verify_signature": False})
        write_ed25519_key_pair(tmp_path / "other.key", tmp_path / "other.pem")
        other = load_pem_private_key((tmp_path / "other.key").read_bytes(), password=None)
        forged = [
            jwt.encode(claims, other, algorithm="EdDSA", headers={"kid": kid}),  # type: ignore[arg-type]
            jwt.encode(claims, "x" * 64, algorithm="HS256"),
        ]
        for bad in forged:
            headers = {"Authorization": f"Bearer {bad}"}
            r = client.get("/api/v1/orders", headers=headers)
            assert r.status_code == 401, r.text
            assert read(r)["code"] == "invalid_token"
            for name, path in [("order", "/api/v1/orders"), ("user", "/api/v1/balance")]:
                r = httpx2.get(cloud.member(name).url + path, headers=headers, trust_env=False, timeout=30)
                assert r.status_code == 401, (name, r.text)


# --- the kill test: the order service dies mid-burst ---------------------------------------------

BURST_CLIENTS = 4
KILL_AFTER = 8  # orders answered 201 before the kill -9
# Small enough that the day's deposit limit (10,000 USD) pays for thousands of orders: while the
# breaker is open its refusals are fast, so the burst can leave hundreds of ids to retry.
QUANTITY = Decimal("0.001")
BACK_OFF = 0.05  # seconds a burst client waits after a 503 before its next order


def _allowed(response: httpx2.Response) -> bool:
    """A 201, a 4xx refusal, or the gateway's documented 503 (problem+json with Retry-After)."""
    if response.status_code == 201 or 400 <= response.status_code < 500:
        return True
    return (
        response.status_code == 503
        and response.headers.get("content-type", "").startswith("application/problem+json")
        and read(response)["code"] == "service_unavailable"
        and int(response.headers["retry-after"]) >= 1
    )


def test_kill_9_of_the_order_service_mid_burst(cloud: CloudOnOneMachine) -> None:
    """kill -9 of the order service during a burst of orders with client_order_ids: only 201s,
    4xx refusals or documented 503s; after it is back, retrying every refused id makes exactly one
    order each; the breaker opened, half-opened and closed; `cnop audit` passes."""
    prefix = uuid.uuid4().hex[:8]
    with gateway_client(cloud) as http:
        _username, auth = new_user(http)
        r = http.post("/api/v1/balance/deposit", json={"amount": "10000"}, headers=auth)
        assert r.status_code == 201, r.text
    state, before = breaker_view(cloud, 0, "order")
    assert state == 0

    def body(client_order_id: str) -> dict[str, str]:
        return {"order_type": "market_buy", "asset_id": "ETH", "quantity": str(QUANTITY),
                "client_order_id": client_order_id}  # fmt: skip

    answers: dict[str, list[httpx2.Response]] = {}
    lock = threading.Lock()
    counter = itertools.count()
    stop = threading.Event()
    created = threading.Semaphore(0)

    def burst() -> None:
        with gateway_client(cloud) as client:
            while not stop.is_set():
                client_order_id = f"kill-{prefix}-{next(counter):04d}"
                r = client.post("/api/v1/orders", json=body(client_order_id), headers=auth)
                with lock:
                    answers[client_order_id] = [r]
                if r.status_code == 201:
                    created.release()
                elif r.status_code == 503:
                    stop.wait(BACK_OFF)

    with ThreadPoolExecutor(BURST_CLIENTS) as pool:
        futures = [pool.submit(burst) for _ in range(BURST_CLIENTS)]
        try:
            for _ in range(KILL_AFTER):
                assert created.acquire(timeout=DEADLINE), "the burst made no orders"
            cloud.kill("order")
            # Keep sending until this gateway's breaker has opened and refused a few more orders.
            poll(lambda: breaker_view(cloud, 0, "order"), lambda view: view[1].get("open", 0) > before.get("open", 0))
            poll(lambda: _rejected(cloud), lambda rejected: rejected >= 3)
        finally:
            stop.set()
            for future in futures:
                future.result()

    with lock:
        first = {cid: responses[0] for cid, responses in answers.items()}
    unexpected = {cid: (r.status_code, r.text) for cid, r in first.items() if not _allowed(r)}
    assert not unexpected, unexpected
    refused = sorted(cid for cid, r in first.items() if r.status_code != 201)
    assert any(first[cid].status_code == 503 for cid in refused), "no order was refused while the service was down"

    cloud.start_member(cloud.member("order"))
    cloud.wait_ready([cloud.member("order")])

    # Every refused id, retried (after its Retry-After) until it is made: one order each.
    with gateway_client(cloud) as http:
        pending = list(refused)
        end = time.monotonic() + DEADLINE
        while pending:
            assert time.monotonic() < end, {cid: answers[cid][-1].text for cid in pending}
            cid = pending.pop(0)
            r = http.post("/api/v1/orders", json=body(cid), headers=auth)
            answers[cid].append(r)
            # Made, still unavailable, or (an order the dead process had claimed) still claimed;
            # any other refusal would never turn into an order, so it fails here, not at the deadline.
            assert r.status_code in (201, 409, 503) and _allowed(r), (r.status_code, r.text)
            if r.status_code != 201:
                pending.append(cid)
                time.sleep(min(float(r.headers.get("retry-after", "1")), 2.0))
        # Each id once more: the first order's answer again, nothing new.
        made = {
            cid: read(next(x for x in responses if x.status_code == 201))["data"] for cid, responses in answers.items()
        }
        for cid, order in made.items():
            r = http.post("/api/v1/orders", json=body(cid), headers=auth)
            assert r.status_code == 201, r.text
            assert read(r)["data"]["order_id"] == order["order_id"]

        orders = all_pages(http, "/api/v1/orders", auth)
        by_client_id: dict[str, list[dict[str, Any]]] = {}
        for order in orders:
            by_client_id.setdefault(order["client_order_id"], []).append(order)
        assert sorted(by_client_id) == sorted(answers)
        assert all(len(found) == 1 for found in by_client_id.values()), by_client_id
        assert {o["order_id"] for o in orders} == {o["order_id"] for o in made.values()}
        assert all(o["status"] == "completed" for o in orders)

        # Money: the deposit less every order's total, one ledger entry per order, the holding the sum.
        spent = sum((usd(o["total_amount"]) for o in orders), Decimal("0"))
        balance = read(http.get("/api/v1/balance", headers=auth))
        assert usd(balance["available_balance"]) == Decimal("10000") - spent
        assert usd(balance["held_balance"]) == Decimal("0")
        ledger = all_pages(http, "/api/v1/balance/transactions", auth, key="transactions")
        per_order = sorted(e["order_id"] for e in ledger if e.get("order_id"))
        assert per_order == sorted(o["order_id"] for o in orders)
        holding = read(http.get("/api/v1/balance/asset/ETH", headers=auth))
        assert exact(holding["quantity"]) == QUANTITY * len(orders)

    # The breaker: opened while the service was down, half-opened, closed once it answered again.
    state, after = breaker_view(cloud, 0, "order")
    assert state == 0
    for entered in ("open", "half_open", "closed"):
        assert after.get(entered, 0) > before.get(entered, 0), (entered, before, after)

    audit = cloud.cnop("audit", check=False)
    assert audit.returncode == 0, audit.stdout.decode() + audit.stderr.decode()


def _rejected(cloud: CloudOnOneMachine) -> float:
    """Orders gateway 1 refused without sending them (breaker open)."""
    text = gateway_metrics(cloud, 0)
    return sum(
        value
        for labels, value in metric_samples(text, "cnop_upstream_requests_total")
        if labels == {"upstream": "order", "outcome": "rejected"}
    )
