"""Inventory use cases: the catalogue as stored, joined with live prices.

The asset list and an asset's detail are read by every front end on every page, and change only
when a price ticks or an asset is written. Their bodies are therefore rendered once and kept,
each with what it was rendered from: the asset list (or asset) the DAO handed out, by identity,
and the price book's `version`. A kept body is served only while both are the very same; an
asset write (here or, through the invalidation channel, in any process) makes the DAO drop its
cached assets, its cache lifetime makes it read them again anyway, and every price change moves
the book's version on, so a kept body is never older than what a fresh rendering would show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cnop.common.clock import Clock
from cnop.common.dao.asset_dao import AssetDAO, _rank_key
from cnop.common.database import keys
from cnop.common.database.store import decode_cursor, encode_cursor
from cnop.common.entities.asset import Asset
from cnop.common.jsonio import dumps
from cnop.market.catalogue import CatalogueAsset
from cnop.market.prices import PriceBook
from cnop.services.inventory.schemas import (
    AssetData,
    AssetDetailData,
    AssetDetailResponse,
    AssetListResponse,
    percentage_change,
)

#: Asset-list bodies kept per rendering (query strings are the client's: category, cursor).
MAX_KEPT_PAGES = 64

PageKey = tuple[bool, str | None, int, str | None]


@dataclass(slots=True)
class _KeptPages:
    """Asset-list bodies rendered from one asset list (by identity) and one price-book version."""

    assets: list[Asset]
    version: int
    bodies: dict[PageKey, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _KeptDetail:
    asset: Asset
    version: int
    body: bytes


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
        self._pages: _KeptPages | None = None
        self._details: dict[str, _KeptDetail] = {}

    async def load_catalogue(self) -> int:
        """Store every catalogue asset and its house inventory that is not stored yet (one read
        first, so a start-up on a loaded store writes nothing: an asset's creation writes its
        house shards too, decision 0025)."""
        now = self.clock.now()
        stored = {asset.asset_id for asset in await self.assets.all_assets()}
        created = 0
        for entry in self.catalogue:
            if entry.asset_id in stored:
                continue
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

    def asset_detail_body(self, asset: Asset) -> bytes:
        """`AssetDetailResponse` of `asset` as JSON, rendered once per asset and price-book version."""
        version = self.prices.version
        kept = self._details.get(asset.asset_id)
        if kept is not None and kept.asset is asset and kept.version == version:
            return kept.body
        body = dumps(AssetDetailResponse(data=self.asset_detail(asset)))
        self._details[asset.asset_id] = _KeptDetail(asset, version, body)
        return body

    async def list_assets_body(
        self, *, active_only: bool, category: str | None, limit: int, cursor: str | None
    ) -> bytes:
        """`list_assets` as JSON, rendered once per asset list, price-book version and query.

        Raises `InvalidCursor` like `list_assets` (nothing is kept for it).
        """
        everything = await self.assets.all_assets()
        version = self.prices.version
        kept = self._pages
        if kept is None or kept.assets is not everything or kept.version != version:
            kept = self._pages = _KeptPages(everything, version)
        key: PageKey = (active_only, category, limit, cursor)
        body = kept.bodies.get(key)
        if body is None:
            body = dumps(self._page(everything, active_only=active_only, category=category, limit=limit, cursor=cursor))
            if len(kept.bodies) >= MAX_KEPT_PAGES:
                kept.bodies.clear()
            kept.bodies[key] = body
        return body

    async def list_assets(
        self, *, active_only: bool, category: str | None, limit: int, cursor: str | None
    ) -> AssetListResponse:
        """A page in market-cap rank order, then id; the counts cover the whole catalogue."""
        everything = await self.assets.all_assets()
        return self._page(everything, active_only=active_only, category=category, limit=limit, cursor=cursor)

    def _page(
        self, everything: list[Asset], *, active_only: bool, category: str | None, limit: int, cursor: str | None
    ) -> AssetListResponse:
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
