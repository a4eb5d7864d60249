"""Weak point 9: trades used a stale snapshot, no offline fallback, floats for prices."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import ROUND_UP, Decimal

import pytest

from cnop.common.clock import FakeClock
from tests.conftest import StoreFactory
from tests.support.api import Api, open_api
from tests.support.books import books, dec, exact


async def test_a_stale_price_is_refused_with_503_and_changes_nothing(fake_clock_api: tuple[Api, FakeClock]) -> None:
    api, clock = fake_clock_api
    _, headers = await api.register()
    await api.deposit(headers, "1000.00")
    api.set_price("BTC", "50000")
    before = await books(api.client, headers)
    clock.advance(api.container.settings.max_price_age_seconds + 1)
    for side in ("market_buy", "market_sell"):
        r = await api.order(headers, order_type=side, asset_id="BTC", quantity="0.001")
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert exact(r)["code"] == "price_unavailable"
    assert await books(api.client, headers) == before
    api.set_price("BTC", "50000")  # a fresh tick: trading again
    assert (await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.001")).status_code == 201


@pytest.fixture
async def offline_api(store_factory: StoreFactory) -> AsyncIterator[Api]:
    """The default price source (simulated, no network), as a fresh install runs it."""
    api, lifespan = await open_api(store_factory, price_source="simulated", price_tick_seconds=0.05)
    yield api
    await api.client.aclose()
    await lifespan.__aexit__(None, None, None)


async def test_a_fresh_install_trades_offline_at_exact_prices(offline_api: Api) -> None:
    api = offline_api
    _, headers = await api.register()
    await api.deposit(headers, "1000.00")
    deadline = time.monotonic() + 60
    while True:
        r = await api.order(headers, order_type="market_buy", asset_id="ETH", quantity="0.0123")
        if r.status_code == 201 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert r.status_code == 201, r.text
    order = exact(r)["data"]
    price, total = dec(order["executed_price"]), dec(order["total_amount"])
    assert "e" not in str(order["total_amount"]).lower()
    assert total == (Decimal("0.0123") * price).quantize(Decimal("0.01"), rounding=ROUND_UP)
    balance = exact(await api.client.get("/api/v1/balance", headers=headers))
    assert dec(balance["available_balance"]) == Decimal("1000.00") - total
    assert (
        str(balance["available_balance"]).count(".") == 1 and len(str(balance["available_balance"]).split(".")[1]) == 2
    )
