"""Valuation reads never answer 500, whatever a stored quantity or a price is (edge findings 4, 5).

The bounds at the edges (admin prices, limit prices, the price book's admission range) keep
absurd numbers out; these tests put them in anyway, past every bound, to prove that the reads
(asset list and detail, portfolio, asset balance, insights) and the trades that value an order
still answer: with the amount, or null where no exact amount exists, and never 500.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest

from cnop.common.clock import SystemClock
from cnop.common.database import keys
from cnop.common.database.store import Update
from cnop.market.catalogue import load_catalogue
from cnop.market.prices import MAX_MARKET_PRICE, MIN_MARKET_PRICE, PriceBook, Tick
from tests.support.api import Api
from tests.support.wire import exact, read, usd

D = Decimal
READS = [
    "/api/v1/inventory/assets?limit=250",
    "/api/v1/inventory/assets/SOL",
    "/api/v1/portfolio",
    "/api/v1/balance/asset/SOL",
    "/api/v1/insights/portfolio",
]


def force_price(api: Api, asset_id: str, price: Decimal) -> None:
    """Put a tick into the book past its admission bound, as a bug or a future source might."""
    book = api.container.price_book
    tick = Tick(asset_id, price, api.container.clock.now())
    history = book._assets[asset_id]
    history.add(tick, math.floor(tick.at.timestamp()))
    book._stats.pop(asset_id, None)


async def reads(api: Api, headers: dict[str, str]) -> dict[str, Any]:
    answers = {}
    for path in READS:
        r = await api.client.get(path, headers=headers)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        answers[path] = read(r)
    return answers


async def holder(api: Api) -> tuple[str, dict[str, str]]:
    username, headers = await api.register()
    await api.deposit(headers, "1000")
    api.set_price("SOL", "150")
    api.set_price("BTC", "50000")
    for asset, quantity in (("SOL", "1"), ("BTC", "0.001")):
        r = await api.order(headers, order_type="market_buy", asset_id=asset, quantity=quantity)
        assert r.status_code == 201, r.text
    return username, headers


@pytest.mark.parametrize(
    ("price", "value"), [("1e400", None), ("1e60", None), ("1e-2000000", "0.00"), ("1e-30", "0.00")]
)
async def test_every_valuation_read_answers_whatever_the_price(api: Api, price: str, value: str | None) -> None:
    username, headers = await holder(api)
    force_price(api, "SOL", D(price))
    answers = await reads(api, headers)
    sol = next(a for a in answers["/api/v1/portfolio"]["assets"] if a["asset_id"] == "SOL")
    assert exact(sol["quantity"]) == 1 and usd(sol["cost_basis"]) == D("150.00")
    # Exact when 38 digits hold it to the cent, else unknown (null) and left out of the totals.
    assert sol["market_value"] == value if value is None else usd(sol["market_value"]) == D(value)
    btc = next(a for a in answers["/api/v1/portfolio"]["assets"] if a["asset_id"] == "BTC")
    assert usd(btc["market_value"]) == D("50.00")  # the other positions are still valued
    assert answers["/api/v1/insights/portfolio"]["data"]


@pytest.mark.parametrize("price", ["1e400", "1e60"])
async def test_a_market_buy_at_an_absurd_price_is_refused_not_500(api: Api, price: str) -> None:
    username, headers = await holder(api)
    balance_before = await api.container.balance_dao.find_balance(username)
    force_price(api, "SOL", D(price))
    r = await api.order(headers, order_type="market_buy", asset_id="SOL", quantity="1")
    assert r.status_code == 422 and read(r)["code"] == "order_value_exceeds_limit", r.text
    assert await api.container.balance_dao.find_balance(username) == balance_before
    # A limit buy far below that price still rests, reserving exactly its own value.
    r = await api.order(headers, order_type="limit_buy", asset_id="SOL", quantity="1", price="100")
    assert r.status_code == 201 and read(r)["data"]["status"] == "queued", r.text
    balance = await api.container.balance_dao.find_balance(username)
    assert balance is not None and balance_before is not None
    assert balance.held == balance_before.held + D("100.00")
    assert balance.available == balance_before.available - D("100.00")


@pytest.mark.parametrize(
    ("quantity", "cost_basis"),
    [
        ("1E+120", "150.00"),
        ("1E-120", "150.00"),
        ("12345678901234567890123456789012345678", "1E+120"),
        ("0.00000001", "0"),
    ],
)
async def test_every_valuation_read_answers_whatever_the_stored_quantity(
    api: Api, quantity: str, cost_basis: str
) -> None:
    username, headers = await holder(api)
    await api.container.store.transact(
        [Update(keys.USERS, keys.holding_key(username, "SOL"), set={"available": D(quantity), "cost_basis": D(cost_basis)})]
    )
    answers = await reads(api, headers)
    sol = next(a for a in answers["/api/v1/portfolio"]["assets"] if a["asset_id"] == "SOL")
    assert exact(sol["quantity"]) == D(quantity)
    detail = answers["/api/v1/balance/asset/SOL"]
    assert exact(detail["quantity"]) == D(quantity)


def test_the_price_book_admits_only_prices_within_its_bounds() -> None:
    clock = SystemClock()
    book = PriceBook.seed(list(load_catalogue()), clock)
    now = clock.now()
    refused = ["1e400", "1e60", "1e-2000000", "0", "-1", "NaN", "Infinity", str(MAX_MARKET_PRICE + 1), "0.000000009"]
    accepted = book.apply([Tick("SOL", D(p), now) for p in refused])
    assert accepted == []
    edge = book.apply([Tick("SOL", MIN_MARKET_PRICE, now), Tick("BTC", MAX_MARKET_PRICE, now)])
    assert [t.price for t in edge] == [MIN_MARKET_PRICE, MAX_MARKET_PRICE]
