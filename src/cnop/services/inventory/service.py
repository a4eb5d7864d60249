"""Inventory use cases: the catalogue as stored, joined with live prices."""

from __future__ import annotations

from datetime import datetime

from cnop.common.clock import Clock
from cnop.common.dao.asset_dao import AssetDAO, _rank_key
from cnop.common.database import keys
from cnop.common.database.store import decode_cursor, encode_cursor
from cnop.common.entities.asset import Asset
from cnop.market.catalogue import CatalogueAsset
from cnop.market.prices import PriceBook
from cnop.services.inventory.schemas import AssetData, AssetDetailData, AssetListResponse, percentage_change


def asset_from_catalogue(entry: CatalogueAsset, now: datetime) -> Asset:
    return Asset(
        asset_id=entry.asset_id,
        name=entry.name,
        symbol=entry.symbol,
        description=entry.description,
        category=entry.category,
        image=entry.image,
        market_cap_rank=entry.market_cap_rank,
        scale=entry.scale,
        min_quantity=entry.min_quantity,
        is_active=entry.is_active,
        market_cap=entry.market_cap,
        total_volume_24h=entry.total_volume_24h,
        circulating_supply=entry.circulating_supply,
        total_supply=entry.total_supply,
        max_supply=entry.max_supply,
        ath=entry.ath,
        ath_date=entry.ath_date,
        atl=entry.atl,
        atl_date=entry.atl_date,
        created_at=now,
        updated_at=now,
    )


class InventoryService:
    def __init__(self, assets: AssetDAO, prices: PriceBook, catalogue: list[CatalogueAsset], clock: Clock) -> None:
        self.assets = assets
        self.prices = prices
        self.catalogue = catalogue
        self.clock = clock

    async def load_catalogue(self) -> int:
        """Store every catalogue asset and its house inventory that is not stored yet."""
        now = self.clock.now()
        created = 0
        for entry in self.catalogue:
            if await self.assets.create_asset(asset_from_catalogue(entry, now), entry.house_inventory):
                created += 1
        return created

    def asset_data(self, asset: Asset) -> AssetData:
        stats = self.prices.stats(asset.asset_id)
        return AssetData(
            asset_id=asset.asset_id,
            name=asset.name,
            description=asset.description,
            category=asset.category,
            price_usd=stats.price if stats else None,
            is_active=asset.is_active,
            symbol=asset.symbol,
            image=asset.image,
            market_cap_rank=asset.market_cap_rank,
            price_change_percentage_24h=stats.price_change_percentage_24h if stats else None,
            market_cap=asset.market_cap,
            total_volume_24h=asset.total_volume_24h,
        )

    def asset_detail(self, asset: Asset) -> AssetDetailData:
        stats = self.prices.stats(asset.asset_id)
        price = stats.price if stats else None
        base = dict(self.asset_data(asset))  # the field values, not their wire text
        return AssetDetailData(
            **base,
            availability_status="available" if asset.is_active and price is not None else "unavailable",
            price_change_24h=stats.price_change_24h if stats else None,
            price_change_percentage_7d=stats.price_change_percentage_7d if stats else None,
            price_change_percentage_30d=stats.price_change_percentage_30d if stats else None,
            high_24h=stats.high_24h if stats else None,
            low_24h=stats.low_24h if stats else None,
            circulating_supply=asset.circulating_supply,
            total_supply=asset.total_supply,
            max_supply=asset.max_supply,
            ath=asset.ath,
            ath_change_percentage=percentage_change(price, asset.ath),
            ath_date=asset.ath_date,
            atl=asset.atl,
            atl_change_percentage=percentage_change(price, asset.atl),
            atl_date=asset.atl_date,
            last_updated=stats.last_updated if stats else None,
            scale=asset.scale,
            min_quantity=asset.min_quantity,
        )

    async def list_assets(
        self, *, active_only: bool, category: str | None, limit: int, cursor: str | None
    ) -> AssetListResponse:
        """A page in market-cap rank order, then id; the counts cover the whole catalogue."""
        everything = await self.assets.all_assets()
        active_count = sum(1 for a in everything if a.is_active)
        chosen = [
            a
            for a in everything
            if (a.is_active or not active_only) and (category is None or (a.category or "").lower() == category.lower())
        ]
        if cursor is not None:
            after = keys.sort_key_of(decode_cursor(cursor))
            chosen = [a for a in chosen if _rank_key(a) > after]
        page = chosen[:limit]
        more = len(chosen) > limit
        next_cursor = encode_cursor(keys.key(keys.ASSETS_INDEX_PK, _rank_key(page[-1]))) if more and page else None
        return AssetListResponse(
            data=[self.asset_data(a) for a in page],
            total_count=len(everything),
            active_count=active_count,
            has_more=more,
            next_cursor=next_cursor,
        )
