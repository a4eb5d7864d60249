"""Weak point 14: routes that always 404, no cancel, no status filter, no totals, 32-bit ids."""

from __future__ import annotations

from decimal import Decimal

from ulid import ULID

from tests.support.api import Api
from tests.support.books import dec, exact
from tests.support.wire import read


async def test_every_documented_route_answers(api: Api) -> None:
    username, headers = await api.register()
    admin = await api.admin()
    await api.deposit(headers, "1000.00")
    api.set_price("BTC", "50000")
    bought = exact(await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.001"))["data"]
    resting = exact(await api.order(headers, order_type="limit_buy", asset_id="BTC", quantity="0.001", price="40000"))
    order_id = resting["data"]["order_id"]
    routes = [
        ("GET", "/health", None, headers, 200),
        ("GET", "/health/ready", None, headers, 200),
        ("GET", "/metrics", None, headers, 200),
        ("GET", "/api/v1/auth/profile", None, headers, 200),
        ("PUT", "/api/v1/auth/profile", {"first_name": "Grace"}, headers, 200),
        ("GET", "/api/v1/balance", None, headers, 200),
        ("GET", "/api/v1/balance/transactions", None, headers, 200),
        ("GET", "/api/v1/balance/asset/BTC", None, headers, 200),
        ("GET", "/api/v1/portfolio", None, headers, 200),
        ("GET", "/api/v1/assets/BTC/transactions", None, headers, 200),
        ("GET", "/api/v1/inventory/assets", None, headers, 200),
        ("GET", "/api/v1/inventory/assets/BTC", None, headers, 200),
        ("GET", "/api/v1/inventory/assets/BTC/prices", None, headers, 200),
        ("GET", "/api/v1/orders", None, headers, 200),
        ("GET", "/api/v1/orders?status=open", None, headers, 200),
        ("GET", f"/api/v1/orders/{bought['order_id']}", None, headers, 200),
        ("GET", "/api/v1/insights/portfolio", None, headers, 200),
        ("GET", f"/api/v1/admin/users/{username}/transactions", None, admin, 200),
        ("DELETE", f"/api/v1/orders/{order_id}", None, headers, 200),
        ("POST", "/api/v1/auth/logout", None, headers, 200),
    ]
    for method, path, body, auth, status in routes:
        r = await api.client.request(method, path, json=body, headers=auth)
        assert r.status_code == status, (method, path, r.status_code, r.text)


async def test_cancel_filters_and_portfolio_totals_exist(api: Api) -> None:
    _, headers = await api.register()
    await api.deposit(headers, "1000.00")
    api.set_price("BTC", "50000")
    assert (await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.002")).status_code == 201
    resting = exact(await api.order(headers, order_type="limit_buy", asset_id="BTC", quantity="0.001", price="40000"))
    order_id = resting["data"]["order_id"]
    assert [
        o["order_id"] for o in exact(await api.client.get("/api/v1/orders?status=open", headers=headers))["data"]
    ] == [order_id]
    cancelled = await api.client.delete(f"/api/v1/orders/{order_id}", headers=headers)
    assert cancelled.status_code == 200 and exact(cancelled)["data"]["status"] == "cancelled"
    assert exact(await api.client.get("/api/v1/orders?status=open", headers=headers))["data"] == []
    assert len(exact(await api.client.get("/api/v1/orders?status=closed", headers=headers))["data"]) == 2
    again = await api.client.delete(f"/api/v1/orders/{order_id}", headers=headers)
    assert again.status_code == 409 and read(again)["code"] == "order_not_cancellable"
    portfolio = exact(await api.client.get("/api/v1/portfolio", headers=headers))
    cash = dec(portfolio["cash"]["total"])
    assert cash == Decimal("900.00")
    assert dec(portfolio["total_value"]) == cash + sum(dec(a["market_value"]) for a in portfolio["assets"])
    assert dec(portfolio["assets"][0]["market_value"]) == Decimal("100.00")


async def test_ids_are_128_bit_and_sort_by_time(api: Api) -> None:
    _, headers = await api.register()
    await api.deposit(headers, "1000.00")
    api.set_price("BTC", "50000")
    ids = []
    for _ in range(3):
        r = await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.001")
        ids.append(exact(r)["data"]["order_id"])
    parsed = [ULID.from_str(i) for i in ids]
    assert all(len(bytes(u)) == 16 for u in parsed)  # 128 bits
    assert ids == sorted(ids) and [u.timestamp for u in parsed] == sorted(u.timestamp for u in parsed)
    ledger = exact(await api.client.get("/api/v1/balance/transactions", headers=headers))["transactions"]
    assert all(len(bytes(ULID.from_str(e["transaction_id"]))) == 16 for e in ledger)
