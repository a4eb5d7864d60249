"""Order entities and the order state machine (its allowed transitions are data, here)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_serializer,
    model_validator,
)

from cnop.common.clock import isoformat
from cnop.common.money import (
    DECIMAL_TEXT_SCHEMA,
    MAX_PRICE,
    Percent,
    PercentInput,
    Price,
    PriceInput,
    Quantity,
    QuantityInput,
    UsdAmount,
    plain_text,
    usd_text,
)


class OrderType(StrEnum):
    MARKET_BUY = "market_buy"
    MARKET_SELL = "market_sell"
    LIMIT_BUY = "limit_buy"
    LIMIT_SELL = "limit_sell"
    STOP_LOSS_BUY = "stop_loss_buy"
    STOP_LOSS_SELL = "stop_loss_sell"
    STOP_LIMIT_BUY = "stop_limit_buy"
    STOP_LIMIT_SELL = "stop_limit_sell"
    TAKE_PROFIT_BUY = "take_profit_buy"
    TAKE_PROFIT_SELL = "take_profit_sell"
    TRAILING_STOP_BUY = "trailing_stop_buy"
    TRAILING_STOP_SELL = "trailing_stop_sell"

    @property
    def side(self) -> OrderSide:
        return OrderSide.BUY if self.value.endswith("_buy") else OrderSide.SELL

    @property
    def is_market(self) -> bool:
        return self in (OrderType.MARKET_BUY, OrderType.MARKET_SELL)


class OrderSide(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


class TimeInForce(StrEnum):
    GTC = "gtc"
    GTD = "gtd"
    IOC = "ioc"
    FOK = "fok"


FINAL_STATUSES = frozenset({OrderStatus.COMPLETED, OrderStatus.CANCELLED, OrderStatus.FAILED, OrderStatus.EXPIRED})

# The order state machine: from each status, the statuses an order may move to.
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset(
        {OrderStatus.CONFIRMED, OrderStatus.QUEUED, OrderStatus.COMPLETED, OrderStatus.FAILED}
    ),
    OrderStatus.CONFIRMED: frozenset({OrderStatus.QUEUED, OrderStatus.COMPLETED, OrderStatus.FAILED}),
    OrderStatus.QUEUED: frozenset(
        {
            OrderStatus.PROCESSING,
            OrderStatus.COMPLETED,
            OrderStatus.CANCELLED,
            OrderStatus.FAILED,
            OrderStatus.EXPIRED,
        }
    ),
    OrderStatus.PROCESSING: frozenset({OrderStatus.COMPLETED, OrderStatus.FAILED}),
    OrderStatus.COMPLETED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
    OrderStatus.FAILED: frozenset(),
    OrderStatus.EXPIRED: frozenset(),
}


def can_transition(current: OrderStatus, target: OrderStatus) -> bool:
    return target in TRANSITIONS[current]


class Order(BaseModel):
    """An order as stored. Amounts are exact Decimals; USD values have two places."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    username: str
    client_order_id: str | None = None
    order_type: OrderType
    asset_id: str
    quantity: Decimal
    price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_amount: Decimal | None = None
    trail_percent: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    expires_at: datetime | None = None
    status: OrderStatus
    executed_price: Decimal | None = None
    total_amount: Decimal | None = None
    held_amount: Decimal = Decimal("0")
    realized_pnl: Decimal | None = None
    reason: str | None = None
    # Resting orders: a stop-limit is at stage "stop" until its stop is crossed, then "limit";
    # a trailing stop remembers the best price seen since placement (`trail_anchor`).
    stage: str | None = None
    trail_anchor: Decimal | None = None
    created_at: datetime
    updated_at: datetime
    executed_at: datetime | None = None
    cancelled_at: datetime | None = None

    @property
    def side(self) -> OrderSide:
        return self.order_type.side


class OrderUpdate(BaseModel):
    """A change of status and the facts that come with it (None: unchanged)."""

    status: OrderStatus
    executed_price: Decimal | None = None
    total_amount: Decimal | None = None
    realized_pnl: Decimal | None = None
    reason: str | None = None
    executed_at: datetime | None = None
    cancelled_at: datetime | None = None
    updated_at: datetime | None = None
    """When the change happens (default: the DAO's clock now)."""

    def applied_to(self, order: Order) -> Order:
        """The order as it stands after this change."""
        changes = {name: value for name, value in self if value is not None}
        return order.model_copy(update={"updated_at": self.updated_at or order.updated_at, **changes})


# --- wire models ------------------------------------------------------------------------------

ASSET_ID_PATTERN = r"^[A-Za-z0-9]{1,10}$"
CLIENT_ORDER_ID_PATTERN = r"^[A-Za-z0-9_\-.:]{1,64}$"
ORDER_ID_PATTERN = r"^[A-Za-z0-9_-]{10,64}$"
MAX_LIMIT_PRICE = MAX_PRICE


def _upper(value: str) -> str:
    return value.upper()


class OrderCreate(BaseModel):
    """A request to place an order (docs/api.md: Orders). Cross-field rules are checked here too."""

    model_config = ConfigDict(extra="ignore")

    order_type: OrderType
    asset_id: Annotated[str, Field(pattern=ASSET_ID_PATTERN), AfterValidator(_upper)]
    quantity: QuantityInput
    price: PriceInput | None = None
    stop_price: PriceInput | None = None
    trail_amount: PriceInput | None = None
    trail_percent: PercentInput | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    expires_at: AwareDatetime | None = None
    client_order_id: Annotated[str | None, Field(pattern=CLIENT_ORDER_ID_PATTERN)] = None

    @model_validator(mode="after")
    def _fields_fit_the_type(self) -> OrderCreate:
        kind = self.order_type.value.rsplit("_", 1)[0]
        needs_price = kind in ("limit", "stop_limit")
        needs_stop = kind in ("stop_loss", "stop_limit", "take_profit")
        trailing = kind == "trailing_stop"
        if needs_price and self.price is None:
            raise ValueError(f"price is required for {self.order_type.value}")
        if not needs_price and not self.order_type.is_market and self.price is not None:
            raise ValueError(f"price is not allowed for {self.order_type.value}")
        if needs_stop and self.stop_price is None:
            raise ValueError(f"stop_price is required for {self.order_type.value}")
        if not needs_stop and self.stop_price is not None:
            raise ValueError(f"stop_price is not allowed for {self.order_type.value}")
        if trailing:
            if (self.trail_amount is None) == (self.trail_percent is None):
                raise ValueError("trailing orders need exactly one of trail_amount and trail_percent")
        elif self.trail_amount is not None or self.trail_percent is not None:
            raise ValueError("trail_amount and trail_percent are only for trailing orders")
        if self.time_in_force is TimeInForce.GTD and self.expires_at is None:
            raise ValueError("time_in_force gtd needs expires_at")
        if self.time_in_force is not TimeInForce.GTD and self.expires_at is not None:
            raise ValueError("expires_at is only for time_in_force gtd")
        if self.order_type.is_market and self.time_in_force not in (
            TimeInForce.GTC,
            TimeInForce.IOC,
            TimeInForce.FOK,
        ):
            raise ValueError("market orders fill at once; gtd does not apply")
        return self


class OrderResponse(BaseModel):
    """An order as clients see it.

    `price` is the price a market order executed at (a client's protection bound is echoed as
    `price_bound`); a resting order's `price` is its limit. `held_amount` is what a resting order
    reserves: USD for buys (two places), units for sells.
    """

    order_id: str
    client_order_id: str | None
    order_type: OrderType
    side: OrderSide
    asset_id: str
    quantity: Quantity
    price: Price | None
    price_bound: Price | None
    stop_price: Price | None
    trail_amount: Price | None
    trail_percent: Percent | None
    time_in_force: TimeInForce
    expires_at: datetime | None
    status: OrderStatus
    executed_price: Price | None
    total_amount: UsdAmount | None
    held_amount: Annotated[
        Decimal,
        WithJsonSchema({**DECIMAL_TEXT_SCHEMA, "description": "Reserved: USD for buys, units for sells"}),
    ]
    realized_pnl: UsdAmount | None
    trail_anchor: Price | None
    created_at: datetime
    updated_at: datetime
    executed_at: datetime | None
    cancelled_at: datetime | None
    reason: str | None

    @field_serializer("held_amount")
    def _held_amount(self, value: Decimal) -> str:
        return usd_text(value) if self.side is OrderSide.BUY else plain_text(value)

    @classmethod
    def of(cls, order: Order) -> OrderResponse:
        if order.order_type.is_market:
            price, bound = order.executed_price, order.price
        else:
            price, bound = order.price, None
        return cls(
            order_id=order.order_id,
            client_order_id=order.client_order_id,
            order_type=order.order_type,
            side=order.side,
            asset_id=order.asset_id,
            quantity=order.quantity,
            price=price,
            price_bound=bound,
            stop_price=order.stop_price,
            trail_amount=order.trail_amount,
            trail_percent=order.trail_percent,
            time_in_force=order.time_in_force,
            expires_at=order.expires_at,
            status=order.status,
            executed_price=order.executed_price,
            total_amount=order.total_amount,
            held_amount=order.held_amount,
            realized_pnl=order.realized_pnl,
            trail_anchor=order.trail_anchor,
            created_at=order.created_at,
            updated_at=order.updated_at,
            executed_at=order.executed_at,
            cancelled_at=order.cancelled_at,
            reason=order.reason,
        )


def _plain(value: Decimal | None) -> str | None:
    return None if value is None else plain_text(value)


def _usd(value: Decimal | None) -> str | None:
    return None if value is None else usd_text(value)


def _moment(value: datetime | None) -> str | None:
    return None if value is None else isoformat(value)


# What an order's wire form is written from, in this order (`order_facts`, `facts_wire`).
_FACT_NAMES = (
    "order_id",
    "client_order_id",
    "order_type",
    "asset_id",
    "quantity",
    "price",
    "stop_price",
    "trail_amount",
    "trail_percent",
    "time_in_force",
    "expires_at",
    "status",
    "executed_price",
    "total_amount",
    "held_amount",
    "realized_pnl",
    "trail_anchor",
    "created_at",
    "updated_at",
    "executed_at",
    "cancelled_at",
    "reason",
)
order_facts: Callable[[Order], tuple[Any, ...]] = operator.attrgetter(*_FACT_NAMES)
"""The values an order's wire form is written from, as one tuple (one C call; kept by the event
bus in place of the wire form, which it writes only when an event is read)."""


def facts_wire(facts: tuple[Any, ...]) -> dict[str, str | None]:
    """The wire form of the order whose `order_facts` these are (see `order_wire`)."""
    (
        order_id,
        client_order_id,
        order_type,
        asset_id,
        quantity,
        limit,
        stop_price,
        trail_amount,
        trail_percent,
        time_in_force,
        expires_at,
        status,
        executed_price,
        total_amount,
        held,
        realized_pnl,
        trail_anchor,
        created_at,
        updated_at,
        executed_at,
        cancelled_at,
        reason,
    ) = facts
    if order_type.is_market:
        price, bound = executed_price, limit
    else:
        price, bound = limit, None
    side = order_type.side
    return {
        "order_id": order_id,
        "client_order_id": client_order_id,
        "order_type": order_type.value,
        "side": side.value,
        "asset_id": asset_id,
        "quantity": plain_text(quantity),
        "price": _plain(price),
        "price_bound": _plain(bound),
        "stop_price": _plain(stop_price),
        "trail_amount": _plain(trail_amount),
        "trail_percent": _plain(trail_percent),
        "time_in_force": time_in_force.value,
        "expires_at": _moment(expires_at),
        "status": status.value,
        "executed_price": _plain(executed_price),
        "total_amount": _usd(total_amount),
        "held_amount": usd_text(held) if side is OrderSide.BUY else plain_text(held),
        "realized_pnl": _usd(realized_pnl),
        "trail_anchor": _plain(trail_anchor),
        "created_at": isoformat(created_at),
        "updated_at": isoformat(updated_at),
        "executed_at": _moment(executed_at),
        "cancelled_at": _moment(cancelled_at),
        "reason": reason,
    }


def order_wire(order: Order) -> dict[str, str | None]:
    """`OrderResponse.of(order)` in its JSON form, written directly: the same keys in the same
    order and the same text for every value (`jsonio.dumps` of either gives the same bytes), without
    building and dumping the model. The hot path's response and event payload (decision 0029);
    `tests/unit/test_order_wire.py` holds it to the model."""
    return facts_wire(order_facts(order))
