"""The Alpaca-compatible API in process, on every engine: keys, errors in Alpaca's shape, and trades
that land in the same books as the native API's."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from cnop.audit import run_audit
from cnop.common.clock import FakeClock
from cnop.common.entities.order import OrderStatus
from tests.conftest import StoreFactory
from tests.support.api import Api, open_api
from tests.support.wire import read, usd

A = "/alpaca"


async def make_key(api: Api, headers: dict[str, str], scopes: list[str] | None = None) -> dict[str, str]:
    body: dict[str, Any] = {"label": "bot"}
    if scopes is not None:
        body["scopes"] = scopes
    r = await api.client.post("/api/v1/auth/api-keys", json=body, headers=headers)
    assert r.status_code == 201, r.text
    created = read(r)
    return {"APCA-API-KEY-ID": created["key_id"], "APCA-API-SECRET-KEY": created["secret"]}


def assert_alpaca_error(r: Any, status: int, code: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = read(r)
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code and isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in r.text
    return str(body["message"])


async def trader(api: Api, cash: str = "1000.00") -> tuple[str, dict[str, str], dict[str, str]]:
    username, headers = await api.register()
    await api.deposit(headers, cash)
    return username, headers, await make_key(api, headers)


async def test_a_wrong_secret_a_missing_key_and_a_revoked_key_are_401_in_alpaca_shape(api: Api) -> None:
    _, headers, key = await trader(api)
    assert (await api.client.get(f"{A}/v2/account", headers=key)).status_code == 200
    wrong = {**key, "APCA-API-SECRET-KEY": api.container.api_keys.hasher.new_secret()}
    assert_alpaca_error(await api.client.get(f"{A}/v2/account", headers=wrong), 401, 40110000)
    assert_alpaca_error(await api.client.get(f"{A}/v2/account"), 401, 40110000)
    only_id = {"APCA-API-KEY-ID": key["APCA-API-KEY-ID"]}
    assert_alpaca_error(await api.client.get(f"{A}/v2/account", headers=only_id), 401, 40110000)
    # a bearer token is no API key
    assert_alpaca_error(await api.client.get(f"{A}/v2/account", headers=headers), 401, 40110000)

    r = await api.client.delete(f"/api/v1/auth/api-keys/{key['APCA-API-KEY-ID']}", headers=headers)
    assert r.status_code == 204
    assert_alpaca_error(await api.client.get(f"{A}/v2/account", headers=key), 401, 40110000)
    r = await api.client.post(
        f"{A}/v2/orders",
        json={"symbol": "BTC/USD", "qty": "0.001", "side": "buy", "type": "market", "time_in_force": "gtc"},
        headers=key,
    )
    assert_alpaca_error(r, 401, 40110000)


async def test_a_read_only_key_reads_but_cannot_trade_and_nothing_changes(api: Api) -> None:
    username, headers = await api.register()
    await api.deposit(headers, "500.00")
    key = await make_key(api, headers, scopes=["read"])
    api.set_price("BTC", "50000")
    assert read(await api.client.get(f"{A}/v2/account", headers=key))["cash"] == "500.00"
    order = {"symbol": "BTC/USD", "qty": "0.001", "side": "buy", "type": "market", "time_in_force": "gtc"}
    assert_alpaca_error(await api.client.post(f"{A}/v2/orders", json=order, headers=key), 403, 40310000)
    assert_alpaca_error(await api.client.delete(f"{A}/v2/orders", headers=key), 403, 40310000)
    assert_alpaca_error(await api.client.delete(f"{A}/v2/positions/BTC/USD", headers=key), 403, 40310000)
    balance = await api.container.balance_dao.get_balance(username)
    assert balance.available == Decimal("500.00") and balance.held == Decimal("0.00")
    orders = await api.client.get("/api/v1/orders?status=all", headers=headers)
    assert read(orders)["data"] == []


async def test_each_key_has_its_own_rate_window_and_429_is_alpacas(store_factory: StoreFactory) -> None:
    api, lifespan = await open_api(store_factory, rate_limit_per_api_key="3/minute")
    try:
        _, headers, key = await trader(api)
        other = await make_key(api, headers)
        for _ in range(3):
            assert (await api.client.get(f"{A}/v2/clock", headers=key)).status_code == 200
        r = await api.client.get(f"{A}/v2/clock", headers=key)
        assert_alpaca_error(r, 429, 42910000)
        assert 1 <= int(r.headers["retry-after"]) <= 61
        assert (await api.client.get(f"{A}/v2/clock", headers=other)).status_code == 200
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_the_gateways_own_refusals_under_the_prefix_are_alpacas_and_native_ones_stay_problems(
    store_factory: StoreFactory,
) -> None:
    api, lifespan = await open_api(store_factory, rate_limit_per_ip="5/minute")
    try:
        for _ in range(5):
            await api.client.get(f"{A}/v1beta3/crypto/us/latest/quotes?symbols=BTC/USD")
        r = await api.client.get(f"{A}/v1beta3/crypto/us/latest/quotes?symbols=BTC/USD")
        assert_alpaca_error(r, 429, 42910000)
        assert r.headers["retry-after"] and r.headers["x-ratelimit-limit"] == "5"
        native = await api.client.get("/api/v1/inventory/assets")
        assert native.status_code == 429
        assert native.headers["content-type"].startswith("application/problem+json")
        assert read(native)["code"] == "rate_limited"
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_unknown_routes_wrong_methods_and_bad_input_answer_in_alpaca_shape_without_redirects(api: Api) -> None:
    _, _, key = await trader(api)
    for path in ("/v2/nothing", "/v2/orders/", "/v3/account", "", "/"):
        r = await api.client.get(f"{A}{path}", headers=key)
        assert_alpaca_error(r, 404, 40410000)
    assert_alpaca_error(await api.client.put(f"{A}/v2/account", headers=key), 405, 40510000)
    assert_alpaca_error(await api.client.get(f"{A}/v2/orders?status=weird", headers=key), 422, 40010001)
    assert_alpaca_error(await api.client.get(f"{A}/v2/orders?limit=501", headers=key), 422, 40010001)
    r = await api.client.post(f"{A}/v2/orders", content=b"{not json", headers={**key, "content-type": "application/json"})
    assert_alpaca_error(r, 422, 40010001)
    assert_alpaca_error(await api.client.get(f"{A}/v2/orders/{uuid.uuid4()}", headers=key), 404, 40410000)
    assert_alpaca_error(await api.client.get(f"{A}/v2/orders/not-an-id", headers=key), 404, 40410000)
    assert_alpaca_error(await api.client.get(f"{A}/v2/positions/BTCUSD", headers=key), 404, 40410000)
    assert_alpaca_error(await api.client.get(f"{A}/v2/assets/NOPE/USD", headers=key), 404, 40410000)
    # the native API keeps its problem documents
    r = await api.client.get("/api/v1/nothing")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"side": "buy", "type": "market", "time_in_force": "day", "qty": "0.001"}, 422, 40010001, "time_in_force"),
        ({"side": "buy", "type": "market", "time_in_force": "fok", "qty": "0.001"}, 422, 40010001, "time_in_force"),
        ({"side": "buy", "type": "market", "time_in_force": "gtc"}, 422, 40010001, "qty"),
        ({"side": "buy", "type": "market", "time_in_force": "gtc", "qty": "1", "notional": "10"}, 422, 40010001, "qty"),
        ({"side": "buy", "type": "limit", "time_in_force": "gtc", "qty": "0.001"}, 422, 40010001, "limit_price"),
        ({"side": "buy", "type": "market", "time_in_force": "gtc", "qty": "-1"}, 422, 40010001, "qty"),
        ({"side": "buy", "type": "market", "time_in_force": "gtc", "qty": "0.000000001"}, 422, 40010001, "qty"),
        ({"side": "buy", "type": "oco", "time_in_force": "gtc", "qty": "0.001"}, 422, 40010001, "type"),
        ({"side": "hold", "type": "market", "time_in_force": "gtc", "qty": "0.001"}, 422, 40010001, "side"),
        ({"side": "buy", "type": "limit", "time_in_force": "gtc", "notional": "10", "limit_price": "1"}, 422,
         40010001, "notional"),
        ({"side": "buy", "type": "market", "time_in_force": "gtc", "qty": "0.1"}, 403, 40310000, None),
        ({"side": "sell", "type": "market", "time_in_force": "gtc", "qty": "0.001"}, 403, 40310000, None),
        ({"side": "buy", "type": "market", "time_in_force": "gtc", "qty": "0.001", "take_profit": {"limit_price": 1}},
         422, 40010001, "order_class"),
    ],
)
async def test_orders_the_rules_refuse_are_alpaca_errors_and_change_nothing(
    api: Api, body: dict[str, Any], status: int, code: int, field: str | None
) -> None:
    username, headers, key = await trader(api, "100.00")
    api.set_price("BTC", "50000")
    r = await api.client.post(f"{A}/v2/orders", json={"symbol": "BTC/USD", **body}, headers=key)
    message = assert_alpaca_error(r, status, code)
    if field is not None:
        assert field in message
    balance = await api.container.balance_dao.get_balance(username)
    assert balance.available == Decimal("100.00") and balance.held == Decimal("0.00")
    assert read(await api.client.get("/api/v1/orders?status=all", headers=headers))["data"] == []
    assert await api.container.holding_dao.get_holdings(username) == []


async def test_a_market_buy_by_either_symbol_lands_in_the_native_books(api: Api) -> None:
    username, headers, key = await trader(api)
    api.set_price("BTC", "50000")
    api.set_price("ETH", "2500")
    r = await api.client.post(
        f"{A}/v2/orders",
        json={"symbol": "BTCUSD", "qty": 0.002, "side": "buy", "type": "market", "time_in_force": "gtc",
              "client_order_id": "bot-1"},
        headers=key,
    )
    assert r.status_code == 200, r.text
    order = read(r)
    assert order["status"] == "filled" and order["symbol"] == "BTC/USD" and order["qty"] == "0.002"
    assert order["filled_qty"] == "0.002" and order["filled_avg_price"] == "50000"
    assert order["client_order_id"] == "bot-1" and order["type"] == "market" and order["order_type"] == "market"
    assert order["time_in_force"] == "gtc" and order["extended_hours"] is False and order["order_class"] == "simple"
    assert order["submitted_at"] == order["created_at"] and order["filled_at"] is not None
    assert uuid.UUID(order["id"]) and uuid.UUID(order["asset_id"])

    native = read(await api.client.get("/api/v1/orders", headers=headers))["data"]
    assert len(native) == 1
    assert native[0]["client_order_id"] == "bot-1" and native[0]["status"] == "completed"
    assert str(uuid.UUID(order["id"])) == order["id"]
    ledger = read(await api.client.get("/api/v1/balance/transactions", headers=headers))["transactions"]
    assert [(e["transaction_type"], usd(e["amount"])) for e in ledger] == [
        ("order_payment", Decimal("100.00")),
        ("deposit", Decimal("1000.00")),
    ]
    balance = await api.container.balance_dao.get_balance(username)
    assert balance.available == Decimal("900.00")
    # a replay with the same client id is the same order, not a second one
    again = await api.client.post(
        f"{A}/v2/orders",
        json={"symbol": "BTCUSD", "qty": 0.002, "side": "buy", "type": "market", "time_in_force": "gtc",
              "client_order_id": "bot-1"},
        headers=key,
    )
    assert again.status_code == 200 and read(again)["id"] == order["id"]
    assert (await api.container.balance_dao.get_balance(username)).available == Decimal("900.00")

    by_id = read(await api.client.get(f"{A}/v2/orders/{order['id']}", headers=key))
    by_client = read(await api.client.get(f"{A}/v2/orders:by_client_order_id?client_order_id=bot-1", headers=key))
    assert by_id == by_client == order
    positions = read(await api.client.get(f"{A}/v2/positions", headers=key))
    assert [(p["symbol"], p["qty"], p["cost_basis"], p["avg_entry_price"]) for p in positions] == [
        ("BTCUSD", "0.002", "100.00", "50000")
    ]
    for symbol in ("BTC/USD", "BTCUSD", "btc/usd", "BTC"):
        position = read(await api.client.get(f"{A}/v2/positions/{symbol}", headers=key))
        assert position == positions[0]
    report = await run_audit(api.container.store)
    assert report.ok, report


async def test_notional_buys_what_the_amount_buys_rounded_down(api: Api) -> None:
    username, _, key = await trader(api)
    api.set_price("ETH", "3000")
    r = await api.client.post(
        f"{A}/v2/orders",
        json={"symbol": "ETH/USD", "notional": "100", "side": "buy", "type": "market", "time_in_force": "ioc"},
        headers=key,
    )
    assert r.status_code == 200, r.text
    order = read(r)
    assert order["qty"] == "0.03333333" and order["time_in_force"] == "ioc"
    balance = await api.container.balance_dao.get_balance(username)
    assert balance.available == Decimal("1000.00") - Decimal("100.00")  # 0.03333333 x 3000 = 99.99999 -> 100.00
    holding = await api.container.holding_dao.get_holding(username, "ETH")
    assert holding is not None and holding.available == Decimal("0.03333333")


async def test_a_resting_limit_order_holds_cash_lists_as_open_and_cancels(api: Api) -> None:
    username, headers, key = await trader(api)
    api.set_price("BTC", "50000")
    r = await api.client.post(
        f"{A}/v2/orders",
        json={"symbol": "BTC/USD", "qty": "0.01", "side": "buy", "type": "limit", "limit_price": "40000",
              "time_in_force": "gtc"},
        headers=key,
    )
    assert r.status_code == 200, r.text
    order = read(r)
    assert order["status"] == "new" and order["limit_price"] == "40000" and order["filled_qty"] == "0"
    assert (await api.container.balance_dao.get_balance(username)).held == Decimal("400.00")
    open_orders = read(await api.client.get(f"{A}/v2/orders?status=open", headers=key))
    assert [o["id"] for o in open_orders] == [order["id"]]
    assert read(await api.client.get(f"{A}/v2/orders?status=closed", headers=key)) == []
    r = await api.client.delete(f"{A}/v2/orders/{order['id']}", headers=key)
    assert r.status_code == 204 and r.content == b""
    assert (await api.container.balance_dao.get_balance(username)).held == Decimal("0.00")
    got = read(await api.client.get(f"{A}/v2/orders/{order['id']}", headers=key))
    assert got["status"] == "canceled" and got["canceled_at"] is not None
    assert_alpaca_error(await api.client.delete(f"{A}/v2/orders/{order['id']}", headers=key), 422, 42210000)
    native = read(await api.client.get("/api/v1/orders?status=all", headers=headers))["data"]
    assert [o["status"] for o in native] == [OrderStatus.CANCELLED.value]
    report = await run_audit(api.container.store)
    assert report.ok, report


async def test_closing_a_position_sells_at_the_market_and_cancel_all_reports_each(api: Api) -> None:
    username, headers, key = await trader(api)
    api.set_price("BTC", "50000")
    buy = {"symbol": "BTC/USD", "qty": "0.004", "side": "buy", "type": "market", "time_in_force": "gtc"}
    assert (await api.client.post(f"{A}/v2/orders", json=buy, headers=key)).status_code == 200
    resting = {"symbol": "BTC/USD", "qty": "0.001", "side": "sell", "type": "limit", "limit_price": "90000",
               "time_in_force": "gtc"}
    placed = read(await api.client.post(f"{A}/v2/orders", json=resting, headers=key))
    assert placed["status"] == "new"
    r = await api.client.delete(f"{A}/v2/positions/BTC/USD?percentage=50", headers=key)
    assert r.status_code == 200, r.text
    sold = read(r)
    assert sold["side"] == "sell" and sold["qty"] == "0.0015" and sold["status"] == "filled"
    cancelled = await api.client.delete(f"{A}/v2/orders", headers=key)
    assert cancelled.status_code == 207
    assert [(c["id"], c["status"], c["body"]["status"]) for c in read(cancelled)] == [(placed["id"], 200, "canceled")]
    closed = await api.client.delete(f"{A}/v2/positions", headers=key)
    assert closed.status_code == 207
    [result] = read(closed)
    assert result["symbol"] == "BTCUSD" and result["status"] == 200 and result["body"]["qty"] == "0.0025"
    assert read(await api.client.get(f"{A}/v2/positions", headers=key)) == []
    holding = await api.container.holding_dao.get_holding(username, "BTC")
    assert holding is not None and holding.quantity == 0
    report = await run_audit(api.container.store)
    assert report.ok, report
    assert headers


async def test_account_assets_clock_and_market_data_in_alpacas_shapes(api: Api) -> None:
    username, _, key = await trader(api)
    api.set_price("BTC", "50000.5")
    account = read(await api.client.get(f"{A}/v2/account", headers=key))
    assert account["status"] == "ACTIVE" and account["account_number"] == username
    assert account["cash"] == "1000.00" and account["buying_power"] == "1000.00" and account["equity"] == "1000.00"
    assert uuid.UUID(account["id"])
    assets = read(await api.client.get(f"{A}/v2/assets?status=active&asset_class=crypto", headers=key))
    btc = next(a for a in assets if a["symbol"] == "BTC/USD")
    assert btc["class"] == "crypto" and btc["exchange"] == "CRYPTO" and btc["tradable"] is True
    assert read(await api.client.get(f"{A}/v2/assets?asset_class=us_equity", headers=key)) == []
    for ref in ("BTC/USD", "BTCUSD", btc["id"]):
        assert read(await api.client.get(f"{A}/v2/assets/{ref}", headers=key)) == btc
    clock = read(await api.client.get(f"{A}/v2/clock", headers=key))
    assert clock["is_open"] is True
    quotes = read(await api.client.get(f"{A}/v1beta3/crypto/us/latest/quotes?symbols=BTC/USD,NOPE/USD"))
    assert list(quotes) == ["quotes"] and list(quotes["quotes"]) == ["BTC/USD"]
    assert quotes["quotes"]["BTC/USD"]["ap"] == quotes["quotes"]["BTC/USD"]["bp"] == "50000.5"
    trades = read(await api.client.get(f"{A}/v1beta3/crypto/us/latest/trades?symbols=BTCUSD"))
    assert trades["trades"]["BTCUSD"]["p"] == "50000.5"
    bars = read(await api.client.get(f"{A}/v1beta3/crypto/us/bars?symbols=BTC/USD&timeframe=1Min"))
    assert set(bars) == {"bars", "next_page_token"} and bars["bars"]["BTC/USD"][-1]["c"] == "50000.5"
    assert_alpaca_error(
        await api.client.get(f"{A}/v1beta3/crypto/us/bars?symbols=BTC/USD&timeframe=7Day"), 422, 40010001
    )


async def test_a_stale_price_is_503_in_alpaca_shape_and_nothing_changes(fake_clock_api: tuple[Api, FakeClock]) -> None:
    api, clock = fake_clock_api
    username, _, key = await trader(api)
    api.set_price("BTC", "50000")
    clock.advance(api.container.settings.max_price_age_seconds + 5)
    order = {"symbol": "BTC/USD", "qty": "0.001", "side": "buy", "type": "market", "time_in_force": "gtc"}
    assert_alpaca_error(await api.client.post(f"{A}/v2/orders", json=order, headers=key), 503, 50310000)
    balance = await api.container.balance_dao.get_balance(username)
    assert balance.available == Decimal("1000.00") and balance.held == Decimal("0.00")


async def test_stop_limit_stop_and_trailing_orders_map_to_the_native_types(api: Api) -> None:
    username, headers, key = await trader(api)
    api.set_price("BTC", "50000")
    buy = {"symbol": "BTC/USD", "qty": "0.01", "side": "buy", "type": "market", "time_in_force": "gtc"}
    assert (await api.client.post(f"{A}/v2/orders", json=buy, headers=key)).status_code == 200
    placed = []
    for body in (
        {"type": "stop_limit", "stop_price": "45000", "limit_price": "44000"},
        {"type": "stop", "stop_price": "40000"},
        {"type": "trailing_stop", "trail_percent": "5"},
        {"type": "trailing_stop", "trail_price": "1000"},
    ):
        r = await api.client.post(
            f"{A}/v2/orders",
            json={"symbol": "BTC/USD", "qty": "0.001", "side": "sell", "time_in_force": "gtc", **body},
            headers=key,
        )
        assert r.status_code == 200, r.text
        placed.append(read(r))
    assert [(o["type"], o["status"], o["stop_price"], o["limit_price"]) for o in placed] == [
        ("stop_limit", "new", "45000", "44000"),
        ("stop", "new", "40000", None),
        ("trailing_stop", "new", "47500", None),
        ("trailing_stop", "new", "49000", None),
    ]
    assert (placed[2]["trail_percent"], placed[2]["hwm"]) == ("5", "50000")
    assert (placed[3]["trail_price"], placed[3]["hwm"]) == ("1000", "50000")
    native = read(await api.client.get("/api/v1/orders?status=queued", headers=headers))["data"]
    assert sorted(o["order_type"] for o in native) == [
        "stop_limit_sell", "stop_loss_sell", "trailing_stop_sell", "trailing_stop_sell"
    ]
    holding = await api.container.holding_dao.get_holding(username, "BTC")
    assert holding is not None and holding.held == Decimal("0.004") and holding.available == Decimal("0.006")
    position = read(await api.client.get(f"{A}/v2/positions/BTCUSD", headers=key))
    assert Decimal(position["qty"]) == Decimal("0.01")
    assert Decimal(position["qty_available"]) == Decimal("0.006")
    report = await run_audit(api.container.store)
    assert report.ok, report
