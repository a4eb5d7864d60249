"""Inventory, insights, admin and health endpoints."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.conftest import StoreFactory
from tests.support.api import Api, assert_problem, funded_user, open_api
from tests.support.wire import exact, read

ASSET_DATA_KEYS = {
    "asset_id", "name", "description", "category", "price_usd", "is_active", "symbol", "image",
    "market_cap_rank", "price_change_percentage_24h", "market_cap", "total_volume_24h",
}
DETAIL_KEYS = ASSET_DATA_KEYS | {
    "availability_status", "price_change_24h", "price_change_percentage_7d", "price_change_percentage_30d",
    "high_24h", "low_24h", "circulating_supply", "total_supply", "max_supply", "ath", "ath_change_percentage",
    "ath_date", "atl", "atl_change_percentage", "atl_date", "last_updated",
}


async def test_asset_list_has_every_key_in_a_stable_order(api: Api) -> None:
    r = await api.client.get("/api/v1/inventory/assets", params={"limit": 250})
    assert r.status_code == 200
    body = read(r)
    assert 20 <= body["total_count"] <= 50 and body["active_count"] == body["total_count"]
    assert body["has_more"] is False and body["next_cursor"] is None
    assets = body["data"]
    assert len(assets) == body["total_count"]
    for asset in assets:
        assert set(asset) >= ASSET_DATA_KEYS, asset
    ranks = [(a["market_cap_rank"], a["asset_id"]) for a in assets]
    assert ranks == sorted(ranks)
    btc = next(a for a in assets if a["asset_id"] == "BTC")
    # The catalogue snapshot's figures, exact strings without padding; the rank stays an integer.
    assert btc["price_usd"] == "67250" and btc["name"] == "Bitcoin" and btc["market_cap_rank"] == 1
    assert btc["market_cap"] == "1325161250000" and btc["total_volume_24h"] == "39800000000"
    assert btc["price_change_percentage_24h"] == "0"
    for asset in assets:
        for field in ("price_usd", "market_cap", "total_volume_24h", "price_change_percentage_24h"):
            if asset[field] is not None:
                exact(asset[field])  # a plain decimal string, never a JSON number
        assert asset["market_cap_rank"] is None or type(asset["market_cap_rank"]) is int
    assert type(body["total_count"]) is int and type(body["active_count"]) is int
    again = read(await api.client.get("/api/v1/inventory/assets", params={"limit": 250}))
    assert [a["asset_id"] for a in again["data"]] == [a["asset_id"] for a in assets]


async def test_asset_list_pages_with_cursor_and_filters_by_category(api: Api) -> None:
    everything = read(await api.client.get("/api/v1/inventory/assets", params={"limit": 250}))["data"]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 7}
        if cursor:
            params["cursor"] = cursor
        page = read(await api.client.get("/api/v1/inventory/assets", params=params))
        seen += [a["asset_id"] for a in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == [a["asset_id"] for a in everything]
    category = everything[0]["category"]
    filtered = read(await api.client.get("/api/v1/inventory/assets", params={"category": category, "limit": 250}))
    assert filtered["data"] and all(a["category"] == category for a in filtered["data"])
    for bad in ({"limit": 0}, {"limit": 251}, {"cursor": "%%%"}):
        assert_problem(await api.client.get("/api/v1/inventory/assets", params=bad), 422, "validation_error")


async def test_asset_detail_has_every_key(api: Api) -> None:
    r = await api.client.get("/api/v1/inventory/assets/btc")
    assert r.status_code == 200
    data = read(r)["data"]
    assert set(data) >= DETAIL_KEYS
    assert data["asset_id"] == "BTC" and data["availability_status"] == "available"
    assert data["price_usd"] == "67250" and data["high_24h"] == "67250" and data["low_24h"] == "67250"
    assert data["price_change_24h"] == "0" and data["price_change_percentage_24h"] == "0"
    assert data["price_change_percentage_7d"] is None and data["price_change_percentage_30d"] is None
    assert data["circulating_supply"] == "19705000" and data["total_supply"] == "19705000"
    assert data["max_supply"] == "21000000" and data["ath"] == "73738" and data["atl"] == "67.81"
    # (67250 - 73738) / 73738 x 100 = -8.79872... and (67250 - 67.81) / 67.81 x 100 = 99074.16310..., to 4 places
    assert data["ath_change_percentage"] == "-8.7987" and data["atl_change_percentage"] == "99074.1631"
    assert data["min_quantity"] == "0.00001" and data["scale"] == 8 and data["market_cap_rank"] == 1
    assert data["market_cap"] == "1325161250000" and data["total_volume_24h"] == "39800000000"


@pytest.mark.parametrize("asset_id", ["BTC!", "UNKNOWN_ASSET", "%20BTC", "B%20TC", "A" * 100, "btc-usd"])
async def test_invalid_asset_ids_are_422(api: Api, asset_id: str) -> None:
    r = await api.client.get(f"/api/v1/inventory/assets/{asset_id}")
    assert_problem(r, 422, "validation_error")


async def test_unknown_asset_is_404(api: Api) -> None:
    assert_problem(await api.client.get("/api/v1/inventory/assets/NOPE"), 404, "asset_not_found")
    assert_problem(await api.client.get("/api/v1/inventory/assets/NOPE/prices"), 404, "asset_not_found")


async def test_price_history_follows_the_ticks(api: Api) -> None:
    admin = await api.admin()
    for price in ("50000", "50500.5", "49000"):
        r = await api.client.post("/api/v1/admin/prices", headers=admin, json={"asset_id": "BTC", "price": price})
        assert r.status_code == 200, r.text
    r = await api.client.get("/api/v1/inventory/assets/BTC/prices", params={"interval": "raw"})
    assert r.status_code == 200
    assert read(r)["data"]["asset_id"] == "BTC"
    prices = [p["price"] for p in read(r)["data"]["prices"]]
    assert prices[-3:] == ["50000", "50500.5", "49000"]
    detail = read(await api.client.get("/api/v1/inventory/assets/BTC"))["data"]
    assert detail["price_usd"] == "49000" and detail["high_24h"] == "67250" and detail["low_24h"] == "49000"
    # 24 h ago the price was the catalogue's 67250: 49000 - 67250 = -18250, -27.1375...%
    assert detail["price_change_24h"] == "-18250"
    assert detail["price_change_percentage_24h"] == "-27.1375"
    assert_problem(await api.client.get("/api/v1/inventory/assets/BTC/prices", params={"interval": "2m"}), 422,
                   "validation_error")


async def test_admin_price_endpoint_rules(api: Api) -> None:
    _, user = await api.register()
    admin = await api.admin()
    body = {"asset_id": "BTC", "price": "50000"}
    assert_problem(await api.client.post("/api/v1/admin/prices", headers=user, json=body), 403, "forbidden")
    assert_problem(await api.client.post("/api/v1/admin/prices", json=body), 401, "not_authenticated")
    for bad in ({"asset_id": "BTC", "price": 0}, {"asset_id": "BTC", "price": "x"}, {"asset_id": "B!", "price": 1}):
        assert_problem(await api.client.post("/api/v1/admin/prices", headers=admin, json=bad), 422, "validation_error")
    assert_problem(await api.client.post("/api/v1/admin/prices", headers=admin, json={"asset_id": "NOPE", "price": 1}),
                   404, "asset_not_found")


async def test_admin_reads_any_ledger(api: Api) -> None:
    username, headers = await funded_user(api, "123.45")
    admin = await api.admin()
    r = await api.client.get(f"/api/v1/admin/users/{username}/transactions", headers=admin)
    assert r.status_code == 200
    entries = read(r)["transactions"]
    assert [(e["amount"], e["available_change"], e["held_change"]) for e in entries] == [("123.45", "123.45", "0.00")]
    assert_problem(await api.client.get(f"/api/v1/admin/users/{username}/transactions", headers=headers), 403,
                   "forbidden")
    assert_problem(await api.client.get("/api/v1/admin/users/nobody_here/transactions", headers=admin), 404,
                   "user_not_found")


async def test_insights_for_empty_cash_only_and_invested_portfolios(api: Api) -> None:
    _, headers = await api.register()
    r = await api.client.get("/api/v1/insights/portfolio", headers=headers)
    assert r.status_code == 200
    data = read(r)["data"]
    assert "empty" in data["summary"] and data["model"] == "cnop-rules-v1" and "generated_at" in data
    await api.deposit(headers, "1000")
    data = read(await api.client.get("/api/v1/insights/portfolio", headers=headers))["data"]
    assert "all in cash" in data["summary"]
    api.set_price("BTC", "50000")
    api.set_price("ETH", "2000")
    assert (await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.015")).status_code == 201
    assert (await api.order(headers, order_type="market_buy", asset_id="ETH", quantity="0.05")).status_code == 201
    first = read(await api.client.get("/api/v1/insights/portfolio", headers=headers))["data"]
    second = read(await api.client.get("/api/v1/insights/portfolio", headers=headers))["data"]
    assert first["summary"] == second["summary"] and first["highlights"] == second["highlights"]
    assert "Bitcoin is your largest position at 75.0%" in first["summary"]
    assert any("concentrated" in h for h in first["highlights"])
    assert any("2 buy and 0 sell" in h for h in first["highlights"])
    assert_problem(await api.client.get("/api/v1/insights/portfolio"), 401, "not_authenticated")


async def test_health_ready_and_metrics(api: Api) -> None:
    r = await api.client.get("/health")
    assert r.status_code == 200 and read(r)["status"] == "healthy"
    assert read(r)["checks"]["store"]["status"] == "ok"
    r = await api.client.get("/health/ready")
    assert r.status_code == 200
    await api.client.get("/api/v1/inventory/assets/BTC")
    r = await api.client.get("/metrics")
    assert r.status_code == 200
    assert '/api/v1/inventory/assets/{asset_id}' in r.text


async def test_every_response_carries_request_id_and_rate_limit_headers(api: Api) -> None:
    for method, path in [("GET", "/health"), ("GET", "/api/v1/inventory/assets"), ("GET", "/nope"),
                         ("DELETE", "/api/v1/inventory/assets"), ("GET", "/api/v1/balance")]:
        r = await api.client.request(method, path)
        assert r.headers.get("x-request-id"), path
        for header in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
            assert header in r.headers, (path, header)
    assert_problem(await api.client.get("/nope"), 404, "not_found")
    assert_problem(await api.client.delete("/api/v1/inventory/assets"), 405, "method_not_allowed")


async def test_admin_prices_are_refused_unless_the_price_source_is_manual(store_factory: StoreFactory) -> None:
    api, lifespan = await open_api(store_factory, price_source="simulated", price_tick_seconds=3600)
    try:
        admin = await api.admin()
        r = await api.client.post("/api/v1/admin/prices", headers=admin, json={"asset_id": "BTC", "price": "1.23456789"})
        body = assert_problem(r, 409, "conflict")
        assert "manual" in body["detail"]
        current = api.container.price_book.current("BTC")
        assert current is not None and current.price != Decimal("1.23456789")  # the book did not take it
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)
