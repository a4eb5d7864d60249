"""AssetDAO's single flight: readers that miss together share one store read, and a change made
while a read is on its way is never hidden by that read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

import pytest

from cnop.common.clock import FakeClock
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.store import StoreWrapper
from cnop.common.entities.asset import Asset
from cnop.common.exceptions import StoreError

T = TypeVar("T")


class GatedStore(StoreWrapper):
    """Counts reads; while `gate` is set, each read waits for it to open."""

    def __init__(self, inner: SQLiteStore) -> None:
        super().__init__(inner)
        self.reads: dict[str, int] = {"get": 0, "query": 0}
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def around(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        if name in self.reads:
            self.reads[name] += 1
            if self.gate is not None:
                await self.gate.wait()
            if self.fail:
                raise StoreError("down")
        return await call()


async def _catalogue(store: SQLiteStore, clock: FakeClock) -> None:
    now = clock.now()
    for asset_id, rank in (("BTC", 1), ("ETH", 2)):
        asset = Asset(
            asset_id=asset_id, name=asset_id, symbol=asset_id, market_cap_rank=rank, created_at=now, updated_at=now
        )
        assert await AssetDAO(store, clock).create_asset(asset, Decimal(5))


async def test_readers_that_miss_together_share_one_read(store: SQLiteStore, clock: FakeClock) -> None:
    await _catalogue(store, clock)
    gated = GatedStore(store)
    assets = AssetDAO(gated, clock)
    gated.gate = asyncio.Event()
    one = [asyncio.ensure_future(assets.find_asset("BTC")) for _ in range(20)]
    every = [asyncio.ensure_future(assets.all_assets()) for _ in range(20)]
    await asyncio.sleep(0.01)
    gated.gate.set()
    found = await asyncio.gather(*one)
    lists = await asyncio.gather(*every)
    assert gated.reads == {"get": 1, "query": 1}
    assert all(a is found[0] for a in found) and found[0] is not None and found[0].asset_id == "BTC"
    assert all(listed is lists[0] for listed in lists) and [a.asset_id for a in lists[0]] == ["BTC", "ETH"]
    assert await assets.find_asset("BTC") is found[0]  # then cached
    assert gated.reads == {"get": 1, "query": 1}


async def test_a_change_during_a_read_keeps_that_read_out_of_the_cache(store: SQLiteStore, clock: FakeClock) -> None:
    await _catalogue(store, clock)
    gated = GatedStore(store)
    assets = AssetDAO(gated, clock)
    gated.gate = asyncio.Event()
    early = asyncio.ensure_future(assets.find_asset("BTC"))
    early_list = asyncio.ensure_future(assets.all_assets())
    await asyncio.sleep(0.01)
    assets.forget("BTC")  # a write elsewhere, announced while the read is on its way
    late = asyncio.ensure_future(assets.find_asset("BTC"))
    await asyncio.sleep(0.01)
    assert gated.reads == {"get": 2, "query": 1}  # the late reader did not join the early read
    gated.gate.set()
    await asyncio.gather(early, early_list, late)
    gated.gate = None
    await assets.find_asset("BTC")
    await assets.all_assets()
    # The early reads were not kept (the late get was, as it started after the change).
    assert gated.reads == {"get": 2, "query": 2}


async def test_a_cancelled_reader_leaves_the_read_to_the_others_and_a_failure_reaches_each(
    store: SQLiteStore, clock: FakeClock
) -> None:
    await _catalogue(store, clock)
    gated = GatedStore(store)
    assets = AssetDAO(gated, clock)
    gated.gate = asyncio.Event()
    first = asyncio.ensure_future(assets.find_asset("ETH"))
    second = asyncio.ensure_future(assets.find_asset("ETH"))
    await asyncio.sleep(0.01)
    first.cancel()
    gated.gate.set()
    found = await second
    assert found is not None and found.asset_id == "ETH"
    with pytest.raises(asyncio.CancelledError):
        await first
    gated.fail = True
    assets.forget("ETH")
    failing = [asyncio.ensure_future(assets.find_asset("ETH")) for _ in range(3)]
    results: list[Any] = await asyncio.gather(*failing, return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
    gated.fail = False
    assert (await assets.find_asset("ETH")) is not None  # a failed read is not kept
