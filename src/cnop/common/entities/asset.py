"""Asset entities."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict


class Asset(BaseModel):
    """A tradeable asset and its reference data (prices live in the price book, not here)."""

    model_config = ConfigDict(frozen=True)

    asset_id: str
    name: str
    symbol: str
    description: str | None = None
    category: str | None = None
    image: str | None = None
    market_cap_rank: int | None = None
    scale: int = 8
    min_quantity: Decimal = Decimal("0.00000001")
    is_active: bool = True
    market_cap: Decimal | None = None
    total_volume_24h: Decimal | None = None
    circulating_supply: Decimal | None = None
    total_supply: Decimal | None = None
    max_supply: Decimal | None = None
    ath: Decimal | None = None
    ath_date: date | None = None
    atl: Decimal | None = None
    atl_date: date | None = None
    created_at: datetime
    updated_at: datetime


class HouseTotals(BaseModel):
    """What the house holds of one asset, summed over every item that holds it: `quantity`
    units and the trade `cash` they brought in; `initial_quantity` is the units that exist
    (house + every user's holding, the audit's invariant)."""

    model_config = ConfigDict(frozen=True)

    asset_id: str
    quantity: Decimal
    cash: Decimal
    initial_quantity: Decimal
