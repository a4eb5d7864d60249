"""AssetDAO's seed methods on the SQLite engine: typed pages in rank order, and the activation
switch through `update_asset`."""

from __future__ import annotations

from decimal import Decimal

from cnop.common.clock import FakeClock
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.entities.asset import Asset


async def test_get_assets_pages_in_rank_order_and_activation_switches(store: SQLiteStore, clock: FakeClock) -> None:
    assets = AssetDAO(store, clock, cache_seconds=0)
    now = clock.now()
    for asset_id, rank in (("ETH", 2), ("BTC", 1), ("DOGE", None)):
        asset = Asset(
            asset_id=asset_id, name=asset_id, symbol=asset_id, market_cap_rank=rank, created_at=now, updated_at=now
        )
        assert await assets.create_asset(asset, Decimal("5"))
    assert not await assets.create_asset(await assets.get_asset("BTC"))  # already there
    first = await assets.get_assets(limit=2)
    rest = await assets.get_assets(limit=2, cursor=first.next_cursor)
    assert [a.asset_id for a in first.items + rest.items] == ["BTC", "ETH", "DOGE"]
    assert all(isinstance(a, Asset) for a in first.items)
    clock.advance(1)
    off = await assets.deactivate_asset("ETH")
    assert not off.is_active and off.updated_at == clock.now()
    assert not (await assets.get_asset("ETH")).is_active
    assert (await assets.activate_asset("ETH")).is_active
    assert await assets.house_quantity("ETH") == Decimal("5")
