"""The cloud shape as real processes on 127.0.0.1: DynamoDB Local, two gateways, user, order,
inventory, insights and a worker (`cnop.dev.CloudOnOneMachine`, what `cnop dev cloud` runs).

One black-box journey through a gateway, the token rules across processes, and one request id
in the gateway's and the service's logs.
"""

from __future__ import annotations

import json
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
from tests.support.cloud import client as gateway_client
from tests.support.cloud import new_user, poll, running_cloud
from tests.support.fake_prices import FakePrices, serve_fake_prices

pytestmark = pytest.mark.system

@pytest.fixture(scope="module")
def prices() -> Iterator[FakePrices]:
    with serve_fake_prices() as served:
        yield served


@pytest.fixture(scope="module")
def cloud(
    tmp_path_factory: pytest.TempPathFactory, dynamodb_endpoint: str, prices: FakePrices
) -> Iterator[CloudOnOneMachine]:
    with running_cloud(tmp_path_factory.mktemp("cloud"), dynamodb_endpoint, prices) as shape:
        yield shape


def _price(client: httpx2.Client, asset: str) -> Decimal:
    r = client.get(f"/api/v1/inventory/assets/{asset}")
    assert r.status_code == 200, r.text
    return Decimal(str(r.json()["data"]["price_usd"]))


def test_a_journey_through_a_gateway(cloud: CloudOnOneMachine, prices: FakePrices) -> None:
    with gateway_client(cloud) as client, gateway_client(cloud, 1) as other_gateway:
        username, auth = new_user(client)
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
        poll(lambda: _price(client, "BTC"), lambda price: price == Decimal("50000"))
        r = client.post("/api/v1/orders", json={"order_type": "limit_buy", "asset_id": "BTC", "quantity": "0.01",
                                                "price": "49000"}, headers=auth)  # fmt: skip
        assert r.status_code == 201, r.text
        resting = r.json()["data"]
        assert resting["status"] == "queued"
        prices.set("BTC", Decimal("48000"))
        filled = poll(lambda: client.get(f"/api/v1/orders/{resting['order_id']}", headers=auth).json()["data"],
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
