"""Market orders, holdings, portfolio, asset transactions (docs/api.md: Orders, Portfolio and holdings)."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from typing import Any

import pytest

from cnop.audit import run_audit
from cnop.common.clock import FakeClock
from tests.support.api import Api, assert_problem, funded_user, snapshot
from tests.support.wire import read

D = Decimal


async def test_buy_then_sell_round_trip_is_exact_everywhere(api: Api) -> None:
    username, headers = await funded_user(api, "10000")
    house_before = await api.container.asset_dao.house_totals("BTC")
    assert house_before is not None
    api.set_price("BTC", "50000")
    r = await api.order(headers, order_type="market_buy", asset_id="btc", quantity="0.12345678")
    assert r.status_code == 201, r.text
    buy = read(r)["data"]
    # 0.12345678 x 50000 = 6172.839 -> the buyer pays 6172.84 (rounded up to the cent)
    assert buy["status"] == "completed" and buy["side"] == "buy" and buy["asset_id"] == "BTC"
    assert buy["quantity"] == "0.12345678" and buy["price"] == "50000" and buy["price_bound"] is None
    assert buy["executed_price"] == "50000" and buy["total_amount"] == "6172.84"
    assert buy["held_amount"] == "0.00" and buy["realized_pnl"] is None
    assert buy["stop_price"] is None and buy["trail_amount"] is None and buy["trail_percent"] is None
    assert buy["trail_anchor"] is None
    assert '"quantity":"0.12345678"' in r.text and '"total_amount":"6172.84"' in r.text
    s = await snapshot(api, username)
    assert s.balance is not None and s.holding is not None and s.house is not None
    assert s.balance.available == D("3827.16") and s.balance.held == 0
    assert s.holding.available == D("0.12345678") and s.holding.cost_basis == D("6172.84")
    assert s.house.quantity == house_before.quantity - D("0.12345678")
    assert s.house.cash == D("6172.84")
    payment = [e for e in s.ledger if e.transaction_type == "order_payment"]
    assert len(payment) == 1 and payment[0].available_change == D("-6172.84") and payment[0].order_id == buy["order_id"]
    assert [t.transaction_type for t in s.asset_txns] == ["buy"]

    api.set_price("BTC", "51000.5")
    r = await api.order(headers, order_type="market_sell", asset_id="BTC", quantity="0.1")
    assert r.status_code == 201, r.text
    sell = read(r)["data"]
    # 0.1 x 51000.5 = 5100.05; cost basis out = 6172.84 x 0.1 / 0.12345678 = 5000.00 (to the cent)
    assert sell["total_amount"] == "5100.05" and sell["executed_price"] == "51000.5" and sell["price"] == "51000.5"
    assert sell["quantity"] == "0.1" and sell["held_amount"] == "0" and sell["realized_pnl"] == "100.05"
    s = await snapshot(api, username)
    assert s.balance is not None and s.holding is not None and s.house is not None
    assert s.balance.available == D("8927.21")
    assert s.holding.available == D("0.02345678") and s.holding.cost_basis == D("1172.84")
    assert s.house.quantity == house_before.quantity - D("0.02345678")
    assert s.house.cash == D("1072.79")
    assert sorted(e.transaction_type for e in s.ledger) == ["deposit", "order_payment", "order_proceeds"]
    assert len(s.orders) == 2

    r = await api.client.get("/api/v1/orders", headers=headers)
    assert read(r)["data"] == [sell, buy]
    r = await api.client.get(f"/api/v1/orders/{buy['order_id']}", headers=headers)
    assert r.status_code == 200 and read(r)["data"] == buy
    r = await api.client.get("/api/v1/assets/BTC/transactions", headers=headers)
    txns = read(r)["data"]
    assert [t["transaction_type"] for t in txns] == ["sell", "buy"]
    assert txns[0]["quantity"] == "0.1" and txns[0]["price"] == "51000.5" and txns[0]["total"] == "5100.05"
    assert txns[1]["quantity"] == "0.12345678" and txns[1]["price"] == "50000" and txns[1]["total"] == "6172.84"
    assert txns[1]["order_id"] == buy["order_id"]
    assert all(t["timestamp"] == t["created_at"] for t in txns)
    report = await run_audit(api.container.store)
    assert report.ok, report.violations


async def test_portfolio_and_asset_balance(api: Api) -> None:
    username, headers = await funded_user(api, "10000")
    r = await api.client.get("/api/v1/portfolio", headers=headers)
    assert r.status_code == 200
    assert read(r)["assets"] == [] and read(r)["total_value"] == "10000.00"
    assert read(r)["cash"] == {"available": "10000.00", "held": "0.00", "total": "10000.00"}
    r = await api.client.get("/api/v1/balance/asset/BTC", headers=headers)
    assert_problem(r, 404, "holding_not_found")
    api.set_price("BTC", "40000")
    api.set_price("ETH", "2000")
    assert (await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.1")).status_code == 201
    assert (await api.order(headers, order_type="market_buy", asset_id="ETH", quantity="1")).status_code == 201
    api.set_price("BTC", "44000")
    r = await api.client.get("/api/v1/portfolio", headers=headers)
    body = read(r)
    assert body["cash"] == {"available": "4000.00", "held": "0.00", "total": "4000.00"}
    btc = next(a for a in body["assets"] if a["asset_id"] == "BTC")
    assert btc == {
        "asset_id": "BTC",
        "asset_name": "Bitcoin",
        "quantity": "0.1",
        "available": "0.1",
        "held": "0",
        "current_price": "44000",
        "market_value": "4400.00",
        "cost_basis": "4000.00",
        "average_price": "40000",
        "unrealized_pnl": "400.00",
        "percentage": "42.31",
    }
    eth = next(a for a in body["assets"] if a["asset_id"] == "ETH")
    assert eth["quantity"] == "1" and eth["market_value"] == "2000.00" and eth["percentage"] == "19.23"
    assert eth["unrealized_pnl"] == "0.00" and eth["average_price"] == "2000"
    assert body["total_value"] == "10400.00"
    assert [a["asset_id"] for a in body["assets"]] == ["BTC", "ETH"]
    r = await api.client.get("/api/v1/balance/asset/btc", headers=headers)
    assert r.status_code == 200
    one = read(r)
    assert one["quantity"] == "0.1" and one["available"] == "0.1" and one["held"] == "0"
    assert one["total_value"] == "4400.00" and one["cost_basis"] == "4000.00" and one["asset_name"] == "Bitcoin"
    assert one["current_price"] == "44000" and one["average_price"] == "40000"
    assert_problem(await api.client.get("/api/v1/balance/asset/NOPE", headers=headers), 404, "asset_not_found")
    assert_problem(await api.client.get("/api/v1/balance/asset/BTC!", headers=headers), 422, "validation_error")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"order_type": "market_sell", "asset_id": "BTC", "quantity": "0.01"}, 422, "insufficient_holdings"),
        ({"order_type": "market_buy", "asset_id": "BTC", "quantity": "0.19"}, 422, "insufficient_funds"),
        ({"order_type": "market_buy", "asset_id": "NOPE", "quantity": "1"}, 422, "asset_not_found"),
        ({"order_type": "market_buy", "asset_id": "BTC!", "quantity": "1"}, 422, "validation_error"),
        ({"order_type": "market_buy", "asset_id": "BTC", "quantity": "0"}, 422, "validation_error"),
        ({"order_type": "market_buy", "asset_id": "BTC", "quantity": "-1"}, 422, "validation_error"),
        ({"order_type": "market_buy", "asset_id": "BTC", "quantity": "0.000000001"}, 422, "validation_error"),
        ({"order_type": "market_buy", "asset_id": "BTC", "quantity": "0.000001"}, 422, "validation_error"),
        ({"order_type": "market_buy", "asset_id": "USDT", "quantity": "10.001"}, 422, "validation_error"),
        ({"order_type": "buy", "asset_id": "BTC", "quantity": "0.01"}, 422, "validation_error"),
        ({"asset_id": "BTC", "quantity": "0.01"}, 422, "validation_error"),
        ({"order_type": "market_buy", "quantity": "0.01"}, 422, "validation_error"),
        ({"order_type": "market_buy", "asset_id": "BTC"}, 422, "validation_error"),
        ({"order_type": "market_buy", "asset_id": "BTC", "quantity": "abc"}, 422, "validation_error"),
        ({"order_type": "market_buy", "asset_id": "BTC", "quantity": "1"}, 422, "order_value_exceeds_limit"),
        ({"order_type": "market_buy", "asset_id": "BTC", "quantity": "0.01", "price": "49999"}, 422, "price_protection"),
        ({"order_type": "market_sell", "asset_id": "ETH", "quantity": "0.5", "price": "2001"}, 422, "price_protection"),
        ({"order_type": "market_buy", "asset_id": "BTC", "quantity": "0.01", "price": "-1"}, 422, "validation_error"),
        ({"order_type": "market_buy", "asset_id": "BTC", "quantity": "0.01", "stop_price": "1"}, 422, "validation_error"),
        ({"order_type": "market_buy", "asset_id": "BTC", "quantity": "0.01", "client_order_id": "x" * 65}, 422, "validation_error"),
    ],
)
async def test_refused_orders_change_nothing(api: Api, body: dict[str, Any], status: int, code: str) -> None:
    username, headers = await funded_user(api, "9000")
    api.set_price("BTC", "50000")
    api.set_price("ETH", "2000")
    assert (await api.order(headers, order_type="market_buy", asset_id="ETH", quantity="1")).status_code == 201
    before_btc = await snapshot(api, username, "BTC")
    before_eth = await snapshot(api, username, "ETH")
    r = await api.order(headers, **body)
    assert_problem(r, status, code)
    assert await snapshot(api, username, "BTC") == before_btc
    assert await snapshot(api, username, "ETH") == before_eth


async def test_inactive_asset_is_not_tradeable_and_changes_nothing(api: Api) -> None:
    username, headers = await funded_user(api)
    admin = await api.admin()
    r = await api.client.post("/api/v1/admin/assets/SOL/deactivate", headers=admin)
    assert r.status_code == 200 and read(r)["data"]["is_active"] is False
    assert read(r)["data"]["availability_status"] == "unavailable" and read(r)["data"]["min_quantity"] == "0.001"
    assert read(r)["data"]["price_usd"] == "166" and read(r)["data"]["scale"] == 6
    before = await snapshot(api, username, "SOL")
    assert_problem(await api.order(headers, order_type="market_buy", asset_id="SOL", quantity="1"), 422, "asset_not_tradeable")
    assert await snapshot(api, username, "SOL") == before
    listed = read(await api.client.get("/api/v1/inventory/assets", params={"limit": 250}))
    assert "SOL" not in [a["asset_id"] for a in listed["data"]]
    all_assets = read(await api.client.get("/api/v1/inventory/assets", params={"limit": 250, "active_only": False}))
    assert "SOL" in [a["asset_id"] for a in all_assets["data"]]
    assert all_assets["active_count"] == all_assets["total_count"] - 1
    r = await api.client.post("/api/v1/admin/assets/SOL/activate", headers=admin)
    assert r.status_code == 200
    assert (await api.order(headers, order_type="market_buy", asset_id="SOL", quantity="1")).status_code == 201
    assert_problem(await api.client.post("/api/v1/admin/assets/SOL/activate", headers=headers), 403, "forbidden")


async def test_stale_price_is_503_and_changes_nothing(fake_clock_api: tuple[Api, FakeClock]) -> None:
    api, clock = fake_clock_api
    username, headers = await funded_user(api)
    before = await snapshot(api, username)
    clock.advance(api.container.settings.max_price_age_seconds + 1)
    r = await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.01")
    assert_problem(r, 503, "price_unavailable")
    assert await snapshot(api, username) == before
    api.set_price("BTC", "60000")
    r = await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.01")
    assert r.status_code == 201 and read(r)["data"]["executed_price"] == "60000"
    assert read(r)["data"]["price"] == "60000" and read(r)["data"]["total_amount"] == "600.00"


async def test_client_price_is_a_bound_never_the_execution_price(api: Api) -> None:
    _, headers = await funded_user(api)
    api.set_price("BTC", "50000")
    r = await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.01", price="60000")
    assert r.status_code == 201
    order = read(r)["data"]
    assert order["executed_price"] == "50000" and order["total_amount"] == "500.00"
    # `price` is what it executed at (the original's clients print it); the bound is echoed apart.
    assert order["price"] == "50000" and order["price_bound"] == "60000"
    r = await api.client.get(f"/api/v1/orders/{order['order_id']}", headers=headers)
    assert read(r)["data"] == order


async def test_client_order_id_replays_and_refuses_reuse(api: Api) -> None:
    username, headers = await funded_user(api)
    api.set_price("BTC", "50000")
    body = {"order_type": "market_buy", "asset_id": "BTC", "quantity": "0.01", "client_order_id": "my-order-1"}
    first = await api.order(headers, **body)
    assert first.status_code == 201 and read(first)["data"]["client_order_id"] == "my-order-1"
    api.set_price("BTC", "55000")
    again = await api.order(headers, **body)
    assert again.status_code == 201 and again.content == first.content
    other = await api.order(headers, **{**body, "quantity": "0.02"})
    assert_problem(other, 422, "idempotency_key_reused")
    s = await snapshot(api, username)
    assert s.balance is not None and s.holding is not None
    assert len(s.orders) == 1 and s.holding.available == D("0.01")
    assert s.balance.available == D("9500.00")


async def test_other_users_order_is_404_and_cannot_be_cancelled(api: Api) -> None:
    _, alice = await funded_user(api)
    _, bob = await funded_user(api)
    api.set_price("BTC", "50000")
    order = read(await api.order(alice, order_type="market_buy", asset_id="BTC", quantity="0.01"))["data"]
    assert_problem(await api.client.get(f"/api/v1/orders/{order['order_id']}", headers=bob), 404, "order_not_found")
    assert_problem(await api.client.delete(f"/api/v1/orders/{order['order_id']}", headers=bob), 404, "order_not_found")
    assert read(await api.client.get("/api/v1/orders", headers=bob)) == {"data": [], "has_more": False, "next_cursor": None}
    assert_problem(await api.client.delete(f"/api/v1/orders/{order['order_id']}", headers=alice), 409, "order_not_cancellable")
    assert_problem(await api.client.get("/api/v1/orders/short", headers=alice), 422, "validation_error")
    r = await api.client.get(f"/api/v1/orders/{order['order_id']}", headers=alice)
    assert read(r)["data"]["status"] == "completed"


async def test_order_list_filters_and_pages(api: Api) -> None:
    _, headers = await funded_user(api)
    api.set_price("BTC", "50000")
    api.set_price("ETH", "2000")
    ids = []
    for asset, kind in [("BTC", "market_buy"), ("ETH", "market_buy"), ("BTC", "market_sell"), ("ETH", "market_buy")]:
        r = await api.order(headers, order_type=kind, asset_id=asset, quantity="0.01")
        assert r.status_code == 201, r.text
        ids.append(read(r)["data"]["order_id"])
    async def listed(**params: Any) -> list[str]:
        r = await api.client.get("/api/v1/orders", headers=headers, params=params)
        assert r.status_code == 200, r.text
        return [o["order_id"] for o in read(r)["data"]]
    assert await listed() == ids[::-1]
    assert await listed(asset_id="btc") == [ids[2], ids[0]]
    assert await listed(order_type="market_sell") == [ids[2]]
    assert await listed(status="completed") == ids[::-1]
    assert await listed(status="open") == []
    assert await listed(status="closed") == ids[::-1]
    first = read(await api.client.get("/api/v1/orders", headers=headers, params={"limit": 3}))
    assert first["has_more"] is True
    rest = await listed(limit=3, cursor=first["next_cursor"])
    assert [o["order_id"] for o in first["data"]] + rest == ids[::-1]
    assert await listed(offset=1, limit=2) == [ids[2], ids[1]]
    for bad in ({"status": "nope"}, {"order_type": "buy"}, {"limit": 500}, {"asset_id": "B!"}):
        assert_problem(await api.client.get("/api/v1/orders", headers=headers, params=bad), 422, "validation_error")


async def test_asset_transactions_unknown_asset_is_404_and_empty_is_empty(api: Api) -> None:
    _, headers = await api.register()
    assert_problem(await api.client.get("/api/v1/assets/NOPE/transactions", headers=headers), 404, "asset_not_found")
    assert_problem(await api.client.get("/api/v1/assets/BAD!/transactions", headers=headers), 422, "validation_error")
    r = await api.client.get("/api/v1/assets/BTC/transactions", headers=headers)
    assert r.status_code == 200 and read(r) == {"data": [], "has_more": False, "next_cursor": None}


async def _mixed_orders(api: Api, headers: dict[str, str], count: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        asset = rng.choice(["BTC", "ETH"])
        side = rng.choice(["market_buy", "market_sell"])
        quantity = rng.choice(["0.001", "0.01", "0.02"]) if asset == "BTC" else rng.choice(["0.1", "0.5", "1"])
        bodies.append({"order_type": side, "asset_id": asset, "quantity": quantity})
    return list(await asyncio.gather(*(api.order(headers, **b) for b in bodies)))


async def _check_after_burst(api: Api, username: str, results: list[Any]) -> None:
    assert all(r.status_code in (201, 422) for r in results), [r.text for r in results if r.status_code not in (201, 422)]
    for r in results:
        if r.status_code == 422:
            assert read(r)["code"] in ("insufficient_funds", "insufficient_holdings")
    ok_ids = {read(r)["data"]["order_id"] for r in results if r.status_code == 201}
    s = await snapshot(api, username)
    stored = {o.order_id for o in s.orders}
    assert ok_ids <= stored
    ledger_orders = {e.order_id for e in s.ledger if e.order_id}
    assert ok_ids <= ledger_orders  # every 201 is in the ledger
    assert s.balance is not None and s.balance.available >= 0
    for asset in ("BTC", "ETH"):
        holding = await api.container.holding_dao.get_holding(username, asset)
        assert holding is None or holding.available >= 0


async def test_100_concurrent_mixed_orders_by_one_user(api: Api) -> None:
    api.container.settings.max_price_age_seconds = 3600
    username, headers = await funded_user(api, "10000")
    api.set_price("BTC", "50000")
    api.set_price("ETH", "2000")
    results = await _mixed_orders(api, headers, 100, seed=1)
    await _check_after_burst(api, username, results)
    s = await snapshot(api, username)
    assert len(s.orders) == sum(1 for r in results if r.status_code == 201)  # every 4xx left no trace
    report = await run_audit(api.container.store)
    assert report.ok, report.violations


async def test_100_concurrent_mixed_orders_each_by_20_users(api: Api) -> None:
    api.container.settings.max_price_age_seconds = 3600  # 2,000 orders outlast 30 s on DynamoDB Local
    api.set_price("BTC", "50000")
    api.set_price("ETH", "2000")
    users = [await funded_user(api, "3000") for _ in range(20)]
    bursts = await asyncio.gather(*(_mixed_orders(api, h, 100, seed=n) for n, (_, h) in enumerate(users)))
    for (username, _), results in zip(users, bursts, strict=True):
        await _check_after_burst(api, username, results)
    report = await run_audit(api.container.store)
    assert report.ok, report.violations
