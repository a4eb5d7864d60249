"""Inventory response shapes (docs/api.md: Inventory). Every key is always present, null where unknown."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from pydantic import BaseModel

from cnop.common.money import MONEY_CONTEXT, Percent, Price, Quantity, or_none


class AssetData(BaseModel):
    asset_id: str
    name: str
    description: str | None
    category: str | None
    price_usd: Price | None
    is_active: bool
    symbol: str
    image: str | None
    market_cap_rank: int | None
    price_change_percentage_24h: Percent | None
    market_cap: Price | None
    total_volume_24h: Price | None


class AssetDetailData(AssetData):
    availability_status: str
    price_change_24h: Price | None
    price_change_percentage_7d: Percent | None
    price_change_percentage_30d: Percent | None
    high_24h: Price | None
    low_24h: Price | None
    circulating_supply: Quantity | None
    total_supply: Quantity | None
    max_supply: Quantity | None
    ath: Price | None
    ath_change_percentage: Percent | None
    ath_date: date | None
    atl: Price | None
    atl_change_percentage: Percent | None
    atl_date: date | None
    last_updated: datetime | None
    scale: int
    min_quantity: Quantity


class AssetListResponse(BaseModel):
    """The seed's name for a page of assets (docs/architecture.md: Names kept from the seed)."""

    data: list[AssetData]
    total_count: int
    active_count: int
    has_more: bool
    next_cursor: str | None


class AssetDetailResponse(BaseModel):
    data: AssetDetailData


class PricePoint(BaseModel):
    time: datetime
    price: Price


class PriceHistory(BaseModel):
    asset_id: str
    interval_seconds: int | None
    prices: list[PricePoint]


class PriceHistoryResponse(BaseModel):
    data: PriceHistory


def percentage_change(current: Decimal | None, reference: Decimal | None) -> Decimal | None:
    if current is None or reference is None or reference == 0:
        return None
    return or_none(lambda: ((current - reference) / reference * 100).quantize(Decimal("0.0001"), context=MONEY_CONTEXT))
