"""Weak point 5: the client's `price` on a market order was trusted for the value cap and funds."""

from __future__ import annotations

from decimal import Decimal

from fastapi.routing import APIRoute

from tests.support.api import Api
from tests.support.books import books, dec, exact


async def test_a_tiny_client_price_does_not_lower_the_value_checked_against_the_cap(api: Api) -> None:
    _, headers = await api.register()
    await api.deposit(headers, "10000.00")
    api.set_price("BTC", "50000")
    before = await books(api.client, headers)
    # 0.3 BTC at the server's 50,000 is 15,000 USD: over the 10,000 cap, whatever the client says.
    r = await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.3", price="0.01")
    assert r.status_code == 422, r.text
    assert exact(r)["code"] in ("order_value_exceeds_limit", "price_protection")
    r = await api.order(headers, order_type="market_sell", asset_id="BTC", quantity="0.3", price="0.01")
    assert r.status_code == 422 and exact(r)["code"] == "order_value_exceeds_limit", r.text
    assert await books(api.client, headers) == before


async def test_a_client_price_on_a_market_buy_is_only_a_bound(api: Api) -> None:
    _, headers = await api.register()
    await api.deposit(headers, "100.00")
    api.set_price("BTC", "50000")
    before = await books(api.client, headers)
    # A bound under the market is refused; it never buys at the client's price.
    r = await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.001", price="1")
    assert r.status_code == 422 and exact(r)["code"] == "price_protection", r.text
    # Funds are checked at the server's price: 0.01 BTC is 500.00 USD, more than the 100.00 held.
    r = await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.01", price="60000")
    assert r.status_code == 422 and exact(r)["code"] == "insufficient_funds", r.text
    assert await books(api.client, headers) == before
    r = await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.001", price="60000")
    assert r.status_code == 201, r.text
    order = exact(r)["data"]
    assert dec(order["executed_price"]) == Decimal("50000") and dec(order["total_amount"]) == Decimal("50.00")
    assert (await books(api.client, headers)).available == Decimal("50.00")


async def test_a_tiny_bound_on_a_market_sell_pays_the_server_price(api: Api) -> None:
    _, headers = await api.register()
    await api.deposit(headers, "100.00")
    api.set_price("BTC", "50000")
    assert (await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.001")).status_code == 201
    r = await api.order(headers, order_type="market_sell", asset_id="BTC", quantity="0.001", price="0.01")
    assert r.status_code == 201, r.text
    assert dec(exact(r)["data"]["total_amount"]) == Decimal("50.00")
    assert (await books(api.client, headers)).available == Decimal("100.00")


async def test_no_route_mints_money(api: Api) -> None:
    paths = {route.path for route in api.app.routes if isinstance(route, APIRoute)}
    assert not [p for p in paths if any(word in p for word in ("bonus", "claim", "reward", "airdrop", "credit"))]
    _, headers = await api.register()
    for path in ("/api/v1/balance/bonus", "/api/v1/balance/claim", "/api/v1/rewards/claim"):
        r = await api.client.post(path, json={"amount": "1000"}, headers=headers)
        assert r.status_code == 404, r.text
    assert (await books(api.client, headers)).available == Decimal("0.00")
