"""Weak point 2: a read-then-write "lock" let two requests hold it; a busy lock answered 500.

64 concurrent requests of one user mix deposits, withdrawals, buys and sells: every answer is a
2xx or a 4xx refusal, and the cash moved is exactly what the accepted answers say, to the cent.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from tests.support.api import Api
from tests.support.books import assert_audit_passes, books, dec, every, exact


async def test_sixty_four_concurrent_mixed_requests_of_one_user_keep_the_books_exact(api: Api) -> None:
    _, headers = await api.register()
    await api.deposit(headers, "300.00")
    api.set_price("BTC", "50000")
    assert (await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.002")).status_code == 201
    start = await books(api.client, headers)

    def request(n: int) -> Any:
        kind = n % 4
        if kind == 0:
            return api.client.post("/api/v1/balance/deposit", json={"amount": "25.00"}, headers=headers)
        if kind == 1:
            return api.client.post("/api/v1/balance/withdraw", json={"amount": "40.00"}, headers=headers)
        if kind == 2:
            return api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.0004")
        return api.order(headers, order_type="market_sell", asset_id="BTC", quantity="0.0005")

    results = await asyncio.gather(*(request(n) for n in range(64)))

    assert all(r.status_code in (201, 422) for r in results), [(r.status_code, r.text) for r in results]
    refusals = {exact(r)["code"] for r in results if r.status_code == 422}
    assert refusals <= {"insufficient_funds", "insufficient_holdings"}, refusals
    moved = Decimal(0)
    units = Decimal(0)
    for n, r in enumerate(results):
        if r.status_code != 201:
            continue
        body = exact(r)
        if n % 4 in (0, 1):
            moved += dec(body["amount"]) if n % 4 == 0 else -dec(body["amount"])
        else:
            order = body["data"]
            sign = -1 if order["order_type"] == "market_buy" else 1
            moved += sign * dec(order["total_amount"])
            units -= sign * dec(order["quantity"])
    after = await books(api.client, headers)
    assert after.available == start.available + moved
    # Selling the last unit empties the holding, and the portfolio lists no empty holdings.
    assert after.holdings.get("BTC", (Decimal(0), Decimal(0)))[0] == start.holdings["BTC"][0] + units
    accepted = sum(1 for r in results if r.status_code == 201)
    assert after.ledger == start.ledger + accepted
    ledger = await every(api.client, "/api/v1/balance/transactions", headers, "transactions")
    assert (
        sum(dec(e["amount"]) * (1 if e["transaction_type"] in ("deposit", "order_proceeds") else -1) for e in ledger)
        == after.available
    )
    await assert_audit_passes(api.container.store)
