"""AssetDAO: the asset catalogue and the house inventory, on the inventory table."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import date
from decimal import Decimal
from typing import Any, TypeVar

from cnop.common.clock import Clock, isoformat, parse_isoformat
from cnop.common.dao.house_dao import HouseInventory
from cnop.common.database import keys
from cnop.common.database.store import Exists, Item, ItemStore, NotExists, Op, Page, Put, Update, query_all
from cnop.common.entities.asset import Asset, HouseTotals
from cnop.common.exceptions import AssetNotFound, ConditionFailed
from cnop.common.shared.invalidation import ALL, ASSET, Invalidations, LocalInvalidations

T = TypeVar("T")
_ALL = object()  # the key of the whole list's load among the loads in flight

_DECIMAL_FIELDS = (
    "min_quantity",
    "market_cap",
    "total_volume_24h",
    "circulating_supply",
    "total_supply",
    "max_supply",
    "ath",
    "atl",
)


def _rank_key(asset: Asset) -> str:
    # Market-cap rank, then id: a stable order from call to call; unranked assets go last.
    rank = asset.market_cap_rank if asset.market_cap_rank is not None else 999_999
    return f"{rank:06d}#{asset.asset_id}"


def asset_to_item(asset: Asset) -> Item:
    item: Item = {
        **keys.asset_key(asset.asset_id),
        keys.GSI1.pk_attr: keys.ASSETS_INDEX_PK,
        keys.GSI1.sk_attr: _rank_key(asset),
        "asset_id": asset.asset_id,
        "name": asset.name,
        "symbol": asset.symbol,
        "description": asset.description,
        "category": asset.category,
        "image": asset.image,
        "market_cap_rank": asset.market_cap_rank,
        "scale": asset.scale,
        "is_active": asset.is_active,
        "ath_date": asset.ath_date.isoformat() if asset.ath_date else None,
        "atl_date": asset.atl_date.isoformat() if asset.atl_date else None,
        "created_at": isoformat(asset.created_at),
        "updated_at": isoformat(asset.updated_at),
    }
    for name in _DECIMAL_FIELDS:
        item[name] = getattr(asset, name)
    return item


def asset_from_item(item: Item) -> Asset:
    values: dict[str, Any] = {name: item.get(name) for name in _DECIMAL_FIELDS}
    return Asset(
        asset_id=item["asset_id"],
        name=item["name"],
        symbol=item["symbol"],
        description=item.get("description"),
        category=item.get("category"),
        image=item.get("image"),
        market_cap_rank=int(item["market_cap_rank"]) if item.get("market_cap_rank") is not None else None,
        scale=int(item.get("scale", 8)),
        is_active=bool(item.get("is_active", True)),
        ath_date=date.fromisoformat(item["ath_date"]) if item.get("ath_date") else None,
        atl_date=date.fromisoformat(item["atl_date"]) if item.get("atl_date") else None,
        created_at=parse_isoformat(item["created_at"]),
        updated_at=parse_isoformat(item["updated_at"]),
        **values,
    )


class AssetDAO:
    """Assets change rarely and are read on every order, so reads are cached for `cache_seconds`.

    Writes through this DAO clear the cache at once and publish the change on `invalidations`
    (topic `asset`), so with Redis every other process drops the asset within milliseconds; if
    a message is lost (Redis down), the entry still expires after `cache_seconds`.

    Single flight: the readers that miss while a read of the same asset (or of the whole list) is
    on its way wait for that read instead of each asking the store. A change (`forget`) while a
    read is on its way leaves it out of the cache (it may have read the asset before the change)
    and lets the next reader start a fresh one.
    """

    def __init__(
        self,
        store: ItemStore,
        clock: Clock,
        *,
        cache_seconds: float = 2.0,
        invalidations: Invalidations | None = None,
        house: HouseInventory | None = None,
    ) -> None:
        self.store = store
        self.house = house if house is not None else HouseInventory(store)
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Asset | None]] = {}
        self._all: tuple[float, list[Asset]] | None = None
        self._loads: dict[object, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self._generation = 0  # moves on with every `forget`: a read started before it is not kept
        self._invalidations = invalidations if invalidations is not None else LocalInvalidations()
        self._invalidations.subscribe(ASSET, self.forget)

    def create_asset_ops(self, asset: Asset, house_quantity: Decimal) -> list[Op]:
        return [
            Put(keys.INVENTORY, asset_to_item(asset), NotExists()),
            *self.house.create_ops(asset.asset_id, house_quantity, asset.scale),
        ]

    async def create_asset(self, asset: Asset, house_quantity: Decimal = Decimal(0)) -> bool:
        """Create the asset and its house inventory; False if it already existed."""
        try:
            await self.store.transact(self.create_asset_ops(asset, house_quantity))
        except ConditionFailed:
            return False
        await self._changed(asset.asset_id)
        return True

    async def get_asset(self, asset_id: str) -> Asset:
        asset = await self.find_asset(asset_id)
        if asset is None:
            raise AssetNotFound(f"Asset {asset_id} not found")
        return asset

    async def find_asset(self, asset_id: str) -> Asset | None:
        cached = self._cache.get(asset_id)
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        return await self._single_flight(asset_id, lambda: self._load_asset(asset_id))

    async def _load_asset(self, asset_id: str) -> Asset | None:
        now, generation = time.monotonic(), self._generation
        item = await self.store.get(keys.INVENTORY, keys.asset_key(asset_id))
        asset = asset_from_item(item) if item is not None else None
        if generation == self._generation:
            self._cache[asset_id] = (now, asset)
        return asset

    async def _single_flight(self, key: object, load: Callable[[], Awaitable[T]]) -> T:
        """`load()`'s answer, shared by every caller that asks for `key` while it runs (on this
        loop). A caller that is cancelled stops waiting; the load goes on for the others."""
        loop = asyncio.get_running_loop()
        running = self._loads.get(key)
        if running is None or running[0] is not loop or running[1].done():
            future: asyncio.Future[T] = asyncio.ensure_future(load())
            running = (loop, future)
            self._loads[key] = running

            def finished(done: asyncio.Future[T], key: object = key) -> None:
                if self._loads.get(key, (None, None))[1] is done:
                    del self._loads[key]
                if not done.cancelled():
                    done.exception()  # retrieved: a failed load is each waiter's error, not the loop's

            future.add_done_callback(finished)
        result: T = await asyncio.shield(running[1])
        return result

    async def update_asset(self, asset_id: str, changes: dict[str, Any]) -> Asset:
        current = await self.get_asset(asset_id)
        updated = current.model_copy(update={**changes, "updated_at": self.clock.now()})
        item = asset_to_item(updated)
        fields = {name: item[name] for name in (*changes, "updated_at", keys.GSI1.sk_attr)}
        try:
            await self.store.transact(
                [Update(keys.INVENTORY, keys.asset_key(asset_id), set=fields, condition=Exists())]
            )
        except ConditionFailed as exc:
            raise AssetNotFound() from exc
        await self._changed(asset_id)
        return updated

    async def _changed(self, asset_id: str) -> None:
        await self._invalidations.publish(ASSET, asset_id)

    def forget(self, asset_id: str) -> None:
        """Drop the cached asset (`ALL`: every asset), so the next read goes to the store."""
        if asset_id == ALL:
            self._cache.clear()
        else:
            self._cache.pop(asset_id, None)
        self._all = None
        self._generation += 1
        self._loads.clear()  # the reads on their way may predate the change: the next reader starts anew

    async def activate_asset(self, asset_id: str) -> Asset:
        return await self.update_asset(asset_id, {"is_active": True})

    async def deactivate_asset(self, asset_id: str) -> Asset:
        return await self.update_asset(asset_id, {"is_active": False})

    async def get_assets(self, *, limit: int = 50, cursor: str | None = None) -> Page[Asset]:
        """Assets in market-cap rank order, then id, a page at a time (not cached)."""
        page = await self.store.query(
            keys.INVENTORY, keys.ASSETS_INDEX_PK, index=keys.ASSETS_INDEX, limit=limit, cursor=cursor
        )
        return Page([asset_from_item(item) for item in page.items], page.next_cursor)

    async def all_assets(self) -> list[Asset]:
        """Every asset in rank order (the catalogue is small: tens of assets); cached like `find_asset`."""
        cached = self._all
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        return await self._single_flight(_ALL, self._load_all)

    async def _load_all(self) -> list[Asset]:
        now, generation = time.monotonic(), self._generation
        items = query_all(self.store, keys.INVENTORY, keys.ASSETS_INDEX_PK, index=keys.ASSETS_INDEX)
        assets = [asset_from_item(item) async for item in items]
        if generation == self._generation:
            self._all = (now, assets)
        return assets

    async def house_quantity(self, asset_id: str) -> Decimal:
        """The units of an asset the house holds now, over all its shards (0 for an unknown asset)."""
        return await self.house.quantity(asset_id)

    async def house_totals(self, asset_id: str) -> HouseTotals | None:
        """The house's units, trade cash and initial units of an asset, summed over its shards
        (consistent reads); None for an unknown asset. For the audit and tests: trades use
        `house_quantity`."""
        state = await self.house.read(asset_id)
        if state.header is None:
            return None
        return HouseTotals(
            asset_id=asset_id,
            quantity=state.quantity,
            cash=state.cash,
            initial_quantity=state.header["initial_quantity"],
        )
