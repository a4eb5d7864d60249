"""Weak point 1: sells were never checked against holdings (anyone could sell what they did not own)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from tests.support.api import Api
from tests.support.books import assert_audit_passes, books, exact


async def test_selling_more_than_held_is_refused_and_changes_nothing(api: Api) -> None:
    _, headers = await api.register()
    await api.deposit(headers, "1000.00")
    api.set_price("BTC", "50000")
    assert (await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.01")).status_code == 201
    before = await books(api.client, headers)

    r = await api.order(headers, order_type="market_sell", asset_id="BTC", quantity="0.011")
    assert r.status_code == 422 and exact(r)["code"] == "insufficient_holdings", r.text
    r = await api.order(headers, order_type="market_sell", asset_id="ETH", quantity="0.1")  # owns none
    assert r.status_code == 422 and exact(r)["code"] == "insufficient_holdings", r.text

    assert await books(api.client, headers) == before
    assert before.holdings["BTC"] == (Decimal("0.01"), Decimal(0))


async def test_units_held_by_a_resting_sell_cannot_be_sold_again(api: Api) -> None:
    _, headers = await api.register()
    await api.deposit(headers, "1000.00")
    api.set_price("BTC", "50000")
    assert (await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.01")).status_code == 201
    resting = await api.order(headers, order_type="limit_sell", asset_id="BTC", quantity="0.008", price="60000")
    assert resting.status_code == 201 and exact(resting)["data"]["status"] == "queued", resting.text
    before = await books(api.client, headers)
    assert before.holdings["BTC"] == (Decimal("0.002"), Decimal("0.008"))

    r = await api.order(headers, order_type="market_sell", asset_id="BTC", quantity="0.003")
    assert r.status_code == 422 and exact(r)["code"] == "insufficient_holdings", r.text
    r = await api.order(headers, order_type="limit_sell", asset_id="BTC", quantity="0.003", price="61000")
    assert r.status_code == 422 and exact(r)["code"] == "insufficient_holdings", r.text
    assert await books(api.client, headers) == before


async def test_a_hundred_concurrent_sells_never_drive_a_holding_negative(api: Api) -> None:
    _, headers = await api.register()
    await api.deposit(headers, "5000.00")
    api.set_price("BTC", "50000")
    assert (await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.05")).status_code == 201

    sells = [api.order(headers, order_type="market_sell", asset_id="BTC", quantity="0.001") for _ in range(100)]
    results = await asyncio.gather(*sells)

    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] * 50 + [422] * 50, statuses
    assert {exact(r)["code"] for r in results if r.status_code == 422} == {"insufficient_holdings"}
    after = await books(api.client, headers)
    assert after.holdings.get("BTC", (Decimal(0), Decimal(0))) == (Decimal(0), Decimal(0))
    # 50 sells of 0.001 BTC at 50,000.00 credit 50.00 each.
    assert after.available == Decimal("5000.00") - Decimal("2500.00") + 50 * Decimal("50.00")
    await assert_audit_passes(api.container.store)
