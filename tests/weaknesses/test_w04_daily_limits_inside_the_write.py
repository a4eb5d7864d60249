"""Weak point 4: daily limits were checked outside the write, and scanned the whole history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from tests.conftest import StoreFactory
from tests.support.api import Api, open_api
from tests.support.books import assert_audit_passes, books, exact
from tests.support.faulty_store import FaultyStore


@pytest.fixture
async def limited(store_factory: StoreFactory) -> AsyncIterator[tuple[Api, FaultyStore]]:
    made: list[FaultyStore] = []

    def factory() -> Any:
        made.append(FaultyStore(store_factory()))
        return made[-1]

    api, lifespan = await open_api(factory, daily_deposit_limit="1000", daily_withdraw_limit="300")
    yield api, made[0]
    await api.client.aclose()
    await lifespan.__aexit__(None, None, None)


async def test_concurrent_deposits_past_the_daily_limit_accept_exactly_the_allowed_ones(
    limited: tuple[Api, FaultyStore],
) -> None:
    api, _ = limited
    _, headers = await api.register()
    deposits = [
        api.client.post("/api/v1/balance/deposit", json={"amount": "100.00"}, headers=headers) for _ in range(15)
    ]
    results = await asyncio.gather(*deposits)

    assert sorted(r.status_code for r in results) == [201] * 10 + [422] * 5
    assert {exact(r)["code"] for r in results if r.status_code == 422} == {"daily_limit_exceeded"}
    after = await books(api.client, headers)
    assert after.available == Decimal("1000.00") and after.ledger == 10

    withdrawals = [
        api.client.post("/api/v1/balance/withdraw", json={"amount": "50.00"}, headers=headers) for _ in range(9)
    ]
    results = await asyncio.gather(*withdrawals)
    assert sorted(r.status_code for r in results) == [201] * 6 + [422] * 3
    assert (await books(api.client, headers)).available == Decimal("700.00")
    await assert_audit_passes(api.container.store)


async def test_the_cost_of_a_deposit_does_not_grow_with_the_ledger(limited: tuple[Api, FaultyStore]) -> None:
    api, store = limited
    username, headers = await api.register()

    async def calls_of_one_deposit() -> list[str]:
        store.arm()
        r = await api.client.post("/api/v1/balance/deposit", json={"amount": "0.01"}, headers=headers)
        store.disarm()
        assert r.status_code == 201, r.text
        return list(store.calls)

    assert (await api.client.get("/api/v1/balance", headers=headers)).status_code == 200  # the caller is remembered
    first = await calls_of_one_deposit()
    for _ in range(300):
        await api.container.money.deposit(username, Decimal("0.01"))  # grow the ledger quickly
    later = await calls_of_one_deposit()
    assert later == first, (first, later)
    assert "query" not in later  # the limit is a counter on one item, not a sum over the ledger
    assert (await books(api.client, headers)).ledger == 302
