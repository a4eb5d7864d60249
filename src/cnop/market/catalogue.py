"""The asset catalogue shipped with the package: real assets with a fixed price snapshot.

The catalogue is what makes a fresh install trade offline: every asset's `price_usd` seeds the
price book before any feed has ticked, and `house_inventory` is the platform's starting stock.
Numbers are written as JSON strings and parsed exactly into Decimals (the file is read with
`parse_float=Decimal`, so a bare JSON number would still be exact; a Python float is refused).
"""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from cnop.common.money import parse_decimal, places

ASSET_ID_PATTERN = re.compile(r"^[A-Z0-9]{1,10}$")

# The snapshot's sanity bounds for the reference asset: a typo of a digit must fail loudly.
BTC_PRICE_RANGE = (Decimal(40_000), Decimal(90_000))

MIN_ASSETS = 20
MAX_ASSETS = 50

_PACKAGE = "cnop.market"
_RESOURCE = "data/assets.json"


def _exact_decimal(value: Any) -> Decimal:
    """A Decimal from a numeric string, int or Decimal; a float would already have lost digits."""
    if isinstance(value, float):
        raise ValueError("must be written as a string, not a JSON float")
    return parse_decimal(value)


ExactDecimal = Annotated[Decimal, BeforeValidator(_exact_decimal)]


class CatalogueAsset(BaseModel):
    """One tradeable asset as shipped: identity, description, market snapshot and house stock."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    asset_id: str = Field(pattern=ASSET_ID_PATTERN.pattern)
    coingecko_id: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=100)
    symbol: str = Field(pattern=r"^[a-z0-9]{1,10}$")
    category: str = Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
    description: str = Field(min_length=1, max_length=500)
    image: str | None = Field(pattern=r"^https://\S+$")
    market_cap_rank: int = Field(ge=1)
    is_active: bool
    scale: int = Field(ge=0, le=18)
    min_quantity: ExactDecimal = Field(gt=0)
    price_usd: ExactDecimal = Field(gt=0)
    market_cap: ExactDecimal | None = Field(ge=0)
    total_volume_24h: ExactDecimal | None = Field(ge=0)
    circulating_supply: ExactDecimal | None = Field(ge=0)
    total_supply: ExactDecimal | None = Field(ge=0)
    max_supply: ExactDecimal | None = Field(gt=0)
    ath: ExactDecimal | None = Field(gt=0)
    ath_date: date | None
    atl: ExactDecimal | None = Field(gt=0)
    atl_date: date | None
    house_inventory: ExactDecimal = Field(ge=0)


class _CatalogueDocument(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    snapshot_date: date
    source: str
    assets: list[CatalogueAsset]


def parse_catalogue(text: str | bytes) -> list[CatalogueAsset]:
    """Parse and validate a catalogue document; raises ValueError naming the first problem.

    Checks beyond each entry's own fields: 20–50 assets, unique ids, symbols and market-cap
    ranks, quantities that fit each asset's scale, and a BTC price inside `BTC_PRICE_RANGE`.
    """
    raw = json.loads(text, parse_float=Decimal)
    document = _CatalogueDocument.model_validate(raw)
    assets = document.assets
    if not MIN_ASSETS <= len(assets) <= MAX_ASSETS:
        raise ValueError(f"catalogue must hold {MIN_ASSETS}–{MAX_ASSETS} assets, not {len(assets)}")
    _require_unique("asset_id", [a.asset_id for a in assets])
    _require_unique("symbol", [a.symbol for a in assets])
    _require_unique("coingecko_id", [a.coingecko_id for a in assets])
    _require_unique("market_cap_rank", [a.market_cap_rank for a in assets])
    for asset in assets:
        if asset.symbol.upper() != asset.asset_id:
            raise ValueError(f"{asset.asset_id}: symbol {asset.symbol!r} does not match the asset id")
        for field in ("min_quantity", "house_inventory"):
            if places(getattr(asset, field)) > asset.scale:
                raise ValueError(f"{asset.asset_id}: {field} has more than {asset.scale} decimal places")
    btc = next((a for a in assets if a.asset_id == "BTC"), None)
    if btc is None:
        raise ValueError("catalogue must list BTC")
    low, high = BTC_PRICE_RANGE
    if not low <= btc.price_usd <= high:
        raise ValueError(f"BTC snapshot price {btc.price_usd} is outside {low}–{high}")
    return sorted(assets, key=lambda a: (a.market_cap_rank, a.asset_id))


def _require_unique(field: str, values: list[Any]) -> None:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {field}: {value!r}")
        seen.add(value)


@cache
def _shipped_catalogue() -> tuple[CatalogueAsset, ...]:
    text = resources.files(_PACKAGE).joinpath(_RESOURCE).read_text(encoding="utf-8")
    return tuple(parse_catalogue(text))


def load_catalogue() -> list[CatalogueAsset]:
    """The shipped catalogue, validated once and cached, in market-cap rank order.

    Returns a fresh list on every call; the assets themselves are immutable.
    """
    return list(_shipped_catalogue())
