"""Weak point 3: order, ledger entry, balance, holding and asset transaction were separate writes.

A fault at each store call of a market buy and of a market sell leaves the whole trade or none
of it. (The full matrix, every use case and both kinds of fault, is
`tests/reliability/test_fault_injection.py`; the process-killed half is
`tests/system/test_crash_sigkill.py`.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from tests.conftest import StoreFactory
from tests.support.api import Api, open_api
from tests.support.books import Books, assert_audit_passes, books, exact
from tests.support.faulty_store import Fault, FaultyStore


@pytest.fixture
async def faulty(store_factory: StoreFactory) -> AsyncIterator[tuple[Api, FaultyStore]]:
    made: list[FaultyStore] = []

    def factory() -> Any:
        made.append(FaultyStore(store_factory()))
        return made[-1]

    api, lifespan = await open_api(factory)
    yield api, made[0]
    await api.client.aclose()
    await lifespan.__aexit__(None, None, None)


async def house_units(api: Api) -> Decimal:
    house = await api.container.asset_dao.house_totals("BTC")
    assert house is not None
    return house.quantity


def trade_moved(before: Books, after: Books, cash: Decimal, units: Decimal) -> bool:
    return (
        after.available == before.available + cash
        and after.holdings.get("BTC", (Decimal(0), Decimal(0)))[0]
        == before.holdings.get("BTC", (Decimal(0),))[0] + units
        and after.ledger == before.ledger + 1
        and after.orders == before.orders + 1
    )


@pytest.mark.parametrize(("side", "quantity"), [("market_buy", "0.01"), ("market_sell", "0.005")])
async def test_a_fault_at_any_call_of_a_trade_leaves_the_whole_trade_or_nothing(
    faulty: tuple[Api, FaultyStore], side: str, quantity: str
) -> None:
    api, store = faulty
    api.set_price("BTC", "50000")

    async def trader() -> dict[str, str]:
        _, headers = await api.register()
        await api.deposit(headers, "1000.00")
        if side == "market_sell":
            assert (
                await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.01")
            ).status_code == 201
        return headers

    warm = await trader()
    assert (await api.order(warm, order_type=side, asset_id="BTC", quantity=quantity)).status_code == 201
    headers = await trader()
    store.arm()
    assert (await api.order(headers, order_type=side, asset_id="BTC", quantity=quantity)).status_code == 201
    store.disarm()
    plan = [(name, store.calls[:i].count(name)) for i, name in enumerate(store.calls)]
    cash = Decimal("-500.00") if side == "market_buy" else Decimal("250.00")
    units = Decimal(quantity) if side == "market_buy" else -Decimal(quantity)

    outcomes = []
    for name, index in plan:
        for fault in (Fault.ERROR, Fault.TIMEOUT):
            headers = await trader()
            before = await books(api.client, headers)
            house_before = await house_units(api)
            store.arm(index, fault, only=name)
            r = await api.order(headers, order_type=side, asset_id="BTC", quantity=quantity)
            assert store.injected is not None, (name, index, store.calls)
            store.disarm()
            after = await books(api.client, headers)
            moved = trade_moved(before, after, cash, units)
            house_moved = await house_units(api) - house_before
            assert r.status_code in (201, 503), r.text
            if r.status_code == 503:
                assert exact(r)["code"] == "store_unavailable"
            if moved:
                assert house_moved == -units
            else:
                assert after == before and house_moved == 0, (index, fault, before, after)
            assert r.status_code != 201 or moved
            outcomes.append(moved)
    assert True in outcomes and False in outcomes, (store.calls, outcomes)  # both halves of "all or nothing" were seen
    await assert_audit_passes(api.container.store)
