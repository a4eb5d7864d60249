"""Inventory response shapes (api.md: Inventory). Every key is always present, null where unknown."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from pydantic import BaseModel

from cnop.common.money import MONEY_CONTEXT, Money, or_none


class AssetData(BaseModel):
    asset_id: str
    name: str
    description: str | None
    category: str | None
    price_usd: Money | None
    is_active: bool
    symbol: str
    image: str | None
    market_cap_rank: int | None
    price_change_percentage_24h: Money | None
    market_cap: Money | None
    total_volume_24h: Money | None


class AssetDetailData(AssetData):
    availability_status: str
    price_change_24h: Money | None
    price_change_percentage_7d: Money | None
    price_change_percentage_30d: Money | None
    high_24h: Money | None
    low_24h: Money | None
    circulating_supply: Money | None
    total_supply: Money | None
    max_supply: Money | None
    ath: Money | None
    ath_change_percentage: Money | None
    ath_date: date | None
    atl: Money | None
    atl_change_percentage: Money | None
    atl_date: date | None
    last_updated: datetime | None
    scale: int
    min_quantity: Money


class AssetListResponse(BaseModel):
    """The seed's name for a page of assets."""

    data: list[AssetData]
    total_count: int
    active_count: int
    has_more: bool
    next_cursor: str | None


class AssetDetailResponse(BaseModel):
    data: AssetDetailData


class PricePoint(BaseModel):
    time: datetime
    price: Money


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
