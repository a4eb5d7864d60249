"""The cloud shape as real processes on 127.0.0.1: DynamoDB Local, two gateways, user, order,
inventory, insights and two workers (`cnop.dev.CloudOnOneMachine`, what `cnop dev cloud` runs).

One black-box journey through a gateway, the token rules across processes, one request id in
the gateway's and the service's logs, and the order service killed (`kill -9`) during a burst.
"""

from __future__ import annotations

import json
import random
import socket
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cnop.common.security.token_manager import write_ed25519_key_pair
from cnop.dev import CloudOnOneMachine
from tests.support.fake_prices import FakePrices, serve_fake_prices

pytestmark = pytest.mark.system

PASSWORD = "Str0ng!Passw0rd"
DEADLINE = 60.0


def _free_base_port() -> int:
    """A base port whose planned range is free, below the kernel's ephemeral ports (no self-connects)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10000, low - 40)
        if all(_is_free(base + offset) for offset in (0, 1, 10, 11, 12, 13, 20, 21)):
            return base
    raise RuntimeError("no free port range")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def prices() -> Iterator[FakePrices]:
    with serve_fake_prices() as served:
        yield served


@pytest.fixture(scope="module")
def cloud(
    tmp_path_factory: pytest.TempPathFactory, dynamodb_endpoint: str, prices: FakePrices
) -> Iterator[CloudOnOneMachine]:
    workdir = tmp_path_factory.mktemp("cloud")
    shape = CloudOnOneMachine(
        workdir,
        "dynamodb",
        base_port=_free_base_port(),
        gateways=2,
        workers=2,
        extra_env={
            "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "CNOP_DYNAMODB_TABLE_PREFIX": f"e2e{uuid.uuid4().hex[:8]}",
            # Every process polls one price server the test controls, so they agree on the market.
            "CNOP_PRICE_SOURCE": f"http:{prices.url}",
            "CNOP_PRICE_TICK_SECONDS": "0.5",
            "CNOP_RATE_LIMIT_PER_IP": "100000/minute",
            "CNOP_RATE_LIMIT_PER_USER": "100000/minute",
            "CNOP_PASSWORD_HASH_WORKERS": "1",
            # Short enough that the kill test sees the breaker open and close within its deadline.
            "CNOP_BREAKER_OPEN_SECONDS": "2",
            "CNOP_UPSTREAM_RETRIES": "1",
            # A request cut off by the kill leaves its idempotency claim; a retry waits this long for it.
            "CNOP_IDEMPOTENCY_LEASE_SECONDS": "5",
        },
    )
    with shape:
        yield shape


def _client(cloud: CloudOnOneMachine, gateway: int = 0) -> httpx2.Client:
    return httpx2.Client(base_url=cloud.gateway_urls()[gateway], timeout=30, trust_env=False)


def _user(client: httpx2.Client) -> tuple[str, dict[str, str]]:
    username = f"e2e_{uuid.uuid4().hex[:10]}"
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD,
            "first_name": "Ada", "last_name": "Lovelace"}  # fmt: skip
    r = client.post("/api/v1/auth/register", json=body)
    assert r.status_code == 201, r.text
    r = client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return username, {"Authorization": f"Bearer {r.json()['access_token']}"}


def _poll(fetch: Any, until: Any, deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while True:
        value = fetch()
        if until(value):
            return value
        if time.monotonic() > end:
            raise AssertionError(f"condition not met in {deadline:g} s; last: {value}")
        time.sleep(0.25)


def _metrics(cloud: CloudOnOneMachine, gateway: int) -> str:
    with _client(cloud, gateway) as client:
        return client.get("/metrics").text


def _price(client: httpx2.Client, asset: str) -> Decimal:
    r = client.get(f"/api/v1/inventory/assets/{asset}")
    assert r.status_code == 200, r.text
    return Decimal(str(r.json()["data"]["price_usd"]))


def test_a_journey_through_a_gateway(cloud: CloudOnOneMachine, prices: FakePrices) -> None:
    with _client(cloud) as client, _client(cloud, 1) as other_gateway:
        username, auth = _user(client)
        r = client.post("/api/v1/balance/deposit", json={"amount": "5000"}, headers=auth)
        assert r.status_code == 201, r.text
        assert Decimal(str(r.json()["balance"])) == Decimal("5000.00")
        r = client.post("/api/v1/balance/withdraw", json={"amount": "500"}, headers=auth)
        assert r.status_code == 201, r.text
        assert Decimal(str(r.json()["balance"])) == Decimal("4500.00")

        # Market buy and sell (through the other gateway: either one serves any request).
        r = other_gateway.post("/api/v1/orders", json={"order_type": "market_buy", "asset_id": "ETH",
                                                       "quantity": "0.5", "client_order_id": "buy-1"}, headers=auth)  # fmt: skip
        assert r.status_code == 201, r.text
        bought = r.json()["data"]
        assert bought["status"] == "completed"
        r = client.post("/api/v1/orders", json={"order_type": "market_sell", "asset_id": "ETH",
                                                "quantity": "0.2"}, headers=auth)  # fmt: skip
        assert r.status_code == 201, r.text
        sold = r.json()["data"]
        assert sold["status"] == "completed"

        # A limit buy below the market rests; when the market falls through it, a worker fills it.
        prices.set("BTC", Decimal("50000"))
        _poll(lambda: _price(client, "BTC"), lambda price: price == Decimal("50000"))
        r = client.post("/api/v1/orders", json={"order_type": "limit_buy", "asset_id": "BTC", "quantity": "0.01",
                                                "price": "49000"}, headers=auth)  # fmt: skip
        assert r.status_code == 201, r.text
        resting = r.json()["data"]
        assert resting["status"] == "queued"
        prices.set("BTC", Decimal("48000"))
        filled = _poll(lambda: client.get(f"/api/v1/orders/{resting['order_id']}", headers=auth).json()["data"],
                       lambda order: order["status"] == "completed")  # fmt: skip
        assert Decimal(str(filled["executed_price"])) == Decimal("48000")
        assert Decimal(str(filled["total_amount"])) == Decimal("480.00")

        # Another far below the market, cancelled: its hold comes back.
        r = client.post("/api/v1/orders", json={"order_type": "limit_buy", "asset_id": "BTC", "quantity": "0.01",
                                                "price": "1.00"}, headers=auth)  # fmt: skip
        assert r.status_code == 201, r.text
        cancel_me = r.json()["data"]
        held = Decimal(str(client.get("/api/v1/balance", headers=auth).json()["held_balance"]))
        assert held == Decimal("0.01")
        r = client.delete(f"/api/v1/orders/{cancel_me['order_id']}", headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["status"] == "cancelled"

        balance = client.get("/api/v1/balance", headers=auth).json()
        assert Decimal(str(balance["held_balance"])) == Decimal("0")
        expected_cash = (
            Decimal("4500.00")
            - Decimal(str(bought["total_amount"]))
            + Decimal(str(sold["total_amount"]))
            - Decimal(str(filled["total_amount"]))
        )
        assert Decimal(str(balance["available_balance"])) == expected_cash

        portfolio = client.get("/api/v1/portfolio", headers=auth)
        assert portfolio.status_code == 200, portfolio.text
        quantities = {a["asset_id"]: Decimal(str(a["quantity"])) for a in portfolio.json()["assets"]}
        assert quantities == {"ETH": Decimal("0.3"), "BTC": Decimal("0.01")}
        insights = client.get("/api/v1/insights/portfolio", headers=auth)
        assert insights.status_code == 200, insights.text
        assert insights.json()["data"]["summary"]

        orders = client.get("/api/v1/orders", headers=auth).json()["data"]
        assert {o["status"] for o in orders} == {"completed", "cancelled"}
        assert len(orders) == 4

    audit = cloud.cnop("audit", check=False)
    assert audit.returncode == 0, audit.stdout.decode() + audit.stderr.decode()


def test_one_request_id_through_the_gateway_and_the_service_logs(cloud: CloudOnOneMachine) -> None:
    request_id = f"e2e-{uuid.uuid4().hex}"
    with _client(cloud) as client:
        _username, auth = _user(client)
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

    gateway = _poll(lambda: lines("gateway-1"), bool, 10)
    service = _poll(lambda: lines("order"), bool, 10)
    assert all(line["request_id"] == request_id for line in gateway + service)
    assert any(line.get("event") == "request" for line in service)


def test_tokens_signed_by_the_user_service_verify_everywhere_and_no_other_token_does(
    cloud: CloudOnOneMachine, tmp_path: Path
) -> None:
    with _client(cloud) as client:
        _username, auth = _user(client)
        token = auth["Authorization"].removeprefix("Bearer ")
        kid = jwt.get_unverified_header(token)["kid"]
        jwks = client.get("/.well-known/jwks.json").json()
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
            assert r.json()["code"] == "invalid_token"
            for name, path in [("order", "/api/v1/orders"), ("user", "/api/v1/balance")]:
                r = httpx2.get(cloud.member(name).url + path, headers=headers, trust_env=False, timeout=30)
                assert r.status_code == 401, (name, r.text)
