"""Weak point 6: blocking store calls inside the event loop; two full scans per asset list.

A store call that hangs for one user does not hold up another user's request (shown by ordering,
not by timing; the cost is measured in `benchmarks/`), and no request path scans a table: the
port has no scan at all, and every query a request makes names one partition.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cnop.common.database import keys
from cnop.common.database.store import Item, ItemStore, Key, Page, Query, StoreWrapper
from tests.conftest import StoreFactory
from tests.support.api import Api, open_api
from tests.support.wire import read


class WatchedStore(StoreWrapper):
    """Passes every call on; holds `get`s of one partition until released; records queries."""

    def __init__(self, inner: ItemStore) -> None:
        super().__init__(inner)
        self.hold_pk: str | None = None
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.queries: list[tuple[str, str, str | None, int]] = []

    async def _get(self, table: str, key: Key, consistent: bool) -> Item | None:
        if key["pk"] == self.hold_pk:
            self.held.set()
            await self.release.wait()
        return await super()._get(table, key, consistent)

    async def _query(self, query: Query) -> Page:
        self.queries.append((query.table, query.pk, query.index, query.limit))
        return await super()._query(query)


@pytest.fixture
async def watched(store_factory: StoreFactory) -> AsyncIterator[tuple[Api, WatchedStore]]:
    made: list[WatchedStore] = []

    def factory() -> Any:
        made.append(WatchedStore(store_factory()))
        return made[-1]

    api, lifespan = await open_api(factory)
    yield api, made[0]
    made[0].release.set()
    await api.client.aclose()
    await lifespan.__aexit__(None, None, None)


async def test_a_hanging_store_call_for_one_user_does_not_hold_up_another(watched: tuple[Api, WatchedStore]) -> None:
    api, store = watched
    slow_user, slow = await api.register()
    _, fast = await api.register()
    store.hold_pk = keys.user_pk(slow_user)

    stuck = asyncio.create_task(api.client.get("/api/v1/balance", headers=slow))
    await asyncio.wait_for(store.held.wait(), 30)
    for path in ("/api/v1/balance", "/api/v1/portfolio", "/api/v1/orders", "/api/v1/inventory/assets", "/health"):
        r = await asyncio.wait_for(api.client.get(path, headers=fast), 30)
        assert r.status_code == 200, (path, r.text)
    assert not stuck.done()  # the other user's balance read is still waiting on its store call
    store.release.set()
    assert (await asyncio.wait_for(stuck, 30)).status_code == 200


async def test_no_request_path_scans_a_table(watched: tuple[Api, WatchedStore]) -> None:
    api, store = watched
    for engine_store in (store.inner,):
        assert not any(hasattr(engine_store, name) for name in ("scan", "scan_all", "execute"))
    username, headers = await api.register()
    await api.deposit(headers, "1000.00")
    api.set_price("BTC", "50000")
    assert (await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.001")).status_code == 201
    placed = await api.order(headers, order_type="limit_buy", asset_id="BTC", quantity="0.001", price="40000")
    order_id = read(placed)["data"]["order_id"]
    store.queries.clear()
    reads = [
        "/api/v1/balance",
        "/api/v1/balance/transactions",
        "/api/v1/portfolio",
        "/api/v1/orders",
        "/api/v1/orders?status=open",
        f"/api/v1/orders/{order_id}",
        "/api/v1/assets/BTC/transactions",
        "/api/v1/balance/asset/BTC",
        "/api/v1/inventory/assets",
        "/api/v1/inventory/assets?active_only=false&limit=250",
        "/api/v1/inventory/assets/BTC",
        "/api/v1/insights/portfolio",
    ]
    for path in reads:
        assert (await api.client.get(path, headers=headers)).status_code == 200, path
    user_pk = keys.user_pk(username)
    for table, pk, index, limit in store.queries:
        assert pk in (user_pk, keys.ASSETS_INDEX_PK), (table, pk, index)  # one user's items, or the asset index
        assert limit <= 500
    asset_lists = [q for q in store.queries if q[1] == keys.ASSETS_INDEX_PK]
    assert len(asset_lists) <= 2  # a cached catalogue page at most per list request, never a scan
