"""Alpaca's shapes, field for field as alpaca-py 0.44's models read them.

Every decimal is a JSON string, exact, in the native API's format (decision 0008: USD amounts
with two places, quantities and prices plain), as Alpaca's trading API writes them as strings;
times are RFC 3339; enum values are Alpaca's own (`new`, `filled`, `canceled`; `ACTIVE`;
`CRYPTO`; `crypto`). Fields Alpaca has and a crypto paper account cannot have are present with
their neutral value (`"0"`, `false`), because the SDK requires some of them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from cnop.common.money import (
    MAX_PERCENT,
    PERCENT_PLACES,
    PercentInput,
    PriceInput,
    QuantityInput,
    UsdAmountInput,
    decimal_input,
    plain_text,
    usd_text,
)


def text(value: Decimal | None) -> str | None:
    """A quantity, price or ratio as a string, plain and exact (`"0.001"`), as the native API writes it."""
    return plain_text(value) if value is not None else None


def usd(value: Decimal | None) -> str | None:
    """A USD amount as a string with two places (`"1000.00"`), as the native API writes it."""
    return usd_text(value) if value is not None else None


# Closing a position by `percentage`: above 0, at most 100 (all of it), at most 4 places.
_PERCENTAGE = decimal_input(places=PERCENT_PLACES, maximum=MAX_PERCENT)
PercentageInput = Annotated[Decimal, BeforeValidator(_PERCENTAGE)]


# --- requests -------------------------------------------------------------------------------


class OrderRequest(BaseModel):
    """`POST /v2/orders` as alpaca-py sends it (`OrderRequest.to_request_fields()`)."""

    model_config = ConfigDict(extra="ignore")

    symbol: Annotated[str, Field(min_length=1, max_length=32)]
    qty: QuantityInput | None = None
    notional: UsdAmountInput | None = None
    side: Literal["buy", "sell"]
    type: Literal["market", "limit", "stop", "stop_limit", "trailing_stop"]
    time_in_force: Literal["gtc", "ioc"]
    limit_price: PriceInput | None = None
    stop_price: PriceInput | None = None
    trail_price: PriceInput | None = None
    trail_percent: PercentInput | None = None
    extended_hours: bool | None = None
    client_order_id: Annotated[str | None, Field(max_length=64)] = None
    order_class: Literal["simple", ""] | None = None
    position_intent: Literal["buy_to_open", "buy_to_close", "sell_to_open", "sell_to_close"] | None = None
    # Multi-leg orders are not offered for crypto: present, they are refused rather than ignored.
    take_profit: dict[str, Any] | None = None
    stop_loss: dict[str, Any] | None = None
    legs: list[Any] | None = None


# --- responses ------------------------------------------------------------------------------


class Account(BaseModel):
    id: str
    account_number: str
    status: Literal["ACTIVE"] = "ACTIVE"
    crypto_status: Literal["ACTIVE"] = "ACTIVE"
    currency: str = "USD"
    buying_power: str
    regt_buying_power: str
    daytrading_buying_power: str = "0.00"
    non_marginable_buying_power: str
    options_buying_power: str = "0.00"
    cash: str
    accrued_fees: str = "0.00"
    pending_transfer_out: str = "0.00"
    pending_transfer_in: str = "0.00"
    portfolio_value: str
    equity: str
    last_equity: str
    long_market_value: str
    short_market_value: str = "0.00"
    initial_margin: str = "0.00"
    maintenance_margin: str = "0.00"
    last_maintenance_margin: str = "0.00"
    sma: str = "0.00"
    multiplier: str = "1"
    pattern_day_trader: bool = False
    trading_blocked: bool = False
    transfers_blocked: bool = False
    account_blocked: bool = False
    trade_suspended_by_user: bool = False
    shorting_enabled: bool = False
    daytrade_count: int = 0
    options_approved_level: int = 0
    options_trading_level: int = 0
    created_at: datetime
    balance_asof: str


class MarketClock(BaseModel):
    timestamp: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime


class AlpacaAsset(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    asset_class: Annotated[Literal["crypto"], Field(alias="class")] = "crypto"
    exchange: Literal["CRYPTO"] = "CRYPTO"
    symbol: str
    name: str
    status: Literal["active", "inactive"]
    tradable: bool
    marginable: bool = False
    shortable: bool = False
    easy_to_borrow: bool = False
    fractionable: bool = True
    min_order_size: str
    min_trade_increment: str
    price_increment: str
    attributes: list[str] = Field(default_factory=list)


class AlpacaOrder(BaseModel):
    id: str
    client_order_id: str
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime
    filled_at: datetime | None
    expired_at: datetime | None
    expires_at: datetime | None
    canceled_at: datetime | None
    failed_at: datetime | None
    replaced_at: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    asset_id: str
    symbol: str
    asset_class: Literal["crypto"] = "crypto"
    notional: str | None = None
    qty: str
    filled_qty: str
    filled_avg_price: str | None
    order_class: Literal["simple"] = "simple"
    order_type: str
    type: str
    side: Literal["buy", "sell"]
    position_intent: str
    time_in_force: str
    limit_price: str | None
    stop_price: str | None
    status: str
    extended_hours: bool = False
    legs: list[Any] | None = None
    trail_percent: str | None
    trail_price: str | None
    hwm: str | None


class Position(BaseModel):
    asset_id: str
    symbol: str
    exchange: Literal["CRYPTO"] = "CRYPTO"
    asset_class: Literal["crypto"] = "crypto"
    asset_marginable: bool = False
    avg_entry_price: str
    qty: str
    qty_available: str
    side: Literal["long"] = "long"
    market_value: str | None
    cost_basis: str
    unrealized_pl: str | None
    unrealized_plpc: str | None
    unrealized_intraday_pl: str | None
    unrealized_intraday_plpc: str | None
    current_price: str | None
    lastday_price: str | None
    change_today: str | None


class CancelResult(BaseModel):
    id: str
    status: int
    body: dict[str, Any] | None


class CloseResult(BaseModel):
    order_id: str | None
    status: int
    symbol: str
    body: dict[str, Any]
