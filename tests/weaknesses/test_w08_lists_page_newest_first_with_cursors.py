"""Weak point 8: lists were capped at 50, oldest first, `offset` ignored, `has_more` wrong."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from cnop.common.entities.order import OrderCreate
from tests.support.api import Api
from tests.support.books import every, exact
from tests.support.wire import usd


async def pages(api: Api, path: str, headers: dict[str, str], field: str, limit: int) -> list[list[Any]]:
    found = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        page = exact(await api.client.get(path, params=params, headers=headers))
        found.append(page[field])
        assert page["has_more"] == (page["next_cursor"] is not None)
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return found


async def test_a_thousand_ledger_entries_page_newest_first_without_gaps_or_duplicates(api: Api) -> None:
    username, headers = await api.register()
    for n in range(1000):
        await api.container.money.deposit(username, Decimal(n + 1) / 100)
    for limit in (100, 37):
        found = await pages(api, "/api/v1/balance/transactions", headers, "transactions", limit)
        entries = [e for page in found for e in page]
        assert [len(p) for p in found[:-1]] == [limit] * (len(found) - 1)
        assert len(entries) == 1000 and len({e["transaction_id"] for e in entries}) == 1000
        # Newest first: amounts were 10.00, 9.99, ... 0.01 counted backwards from the last deposit.
        assert [usd(e["amount"]) for e in entries] == [Decimal(n) / 100 for n in range(1000, 0, -1)]
    old_client = exact(await api.client.get("/api/v1/balance/transactions?limit=20&offset=40", headers=headers))
    assert [usd(e["amount"]) for e in old_client["transactions"]] == [
        Decimal(n) / 100 for n in range(960, 940, -1)
    ]
    assert old_client["has_more"] is True


async def test_three_hundred_orders_page_newest_first_without_gaps_or_duplicates(api: Api) -> None:
    username, headers = await api.register()
    await api.deposit(headers, "10000.00")
    api.set_price("BTC", "50000")
    placed = []
    for n in range(300):
        request = OrderCreate(
            order_type="limit_buy", asset_id="BTC", quantity=Decimal("0.0001"), price=Decimal(1000 + n)
        )
        placed.append((await api.container.trading.place_order(username, request)).order_id)
    for limit in (100, 41):
        found = await pages(api, "/api/v1/orders", headers, "data", limit)
        ids = [o["order_id"] for page in found for o in page]
        assert ids == list(reversed(placed))
    open_orders = await every(api.client, "/api/v1/orders?status=open", headers, "data", limit=100)
    assert len(open_orders) == 300
    assert await every(api.client, "/api/v1/orders?status=completed", headers, "data") == []
