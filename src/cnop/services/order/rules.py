"""The order domain's rules as plain functions: no store, no clock, no I/O.

Trigger maths (where a resting order waits and when a price crosses it), trailing stops, the
reservation a resting order holds, the order value cap, and how a trade's money is rounded.
Everything here is exact `Decimal` arithmetic; the user never receives more than the
arithmetic allows (docs/storage.md §2: a buyer's cost rounds up, a seller's proceeds round down).

Directions: an order indexed `below` fires when the price falls to or under its trigger;
`above` fires when the price rises to or over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_UP, Decimal

from cnop.common.entities.order import Order, OrderCreate, OrderSide, OrderType, TimeInForce
from cnop.common.exceptions import InvalidOrder, OrderValueExceedsLimit, ValidationFailed
from cnop.common.money import CENT, USD_SCALE, describe_amount, round_down, round_up

BELOW = "below"
ABOVE = "above"
PRICE_PLACES = Decimal("0.00000001")
LIMIT_LIKE = frozenset(
    {OrderType.LIMIT_BUY, OrderType.LIMIT_SELL, OrderType.TAKE_PROFIT_BUY, OrderType.TAKE_PROFIT_SELL}
)
STOP_LIKE = frozenset(
    {OrderType.STOP_LOSS_BUY, OrderType.STOP_LOSS_SELL, OrderType.STOP_LIMIT_BUY, OrderType.STOP_LIMIT_SELL}
)
STOP_LIMIT = frozenset({OrderType.STOP_LIMIT_BUY, OrderType.STOP_LIMIT_SELL})
TRAILING = frozenset({OrderType.TRAILING_STOP_BUY, OrderType.TRAILING_STOP_SELL})


# --- money ------------------------------------------------------------------------------------


def check_order_value(value: Decimal, limit: Decimal) -> Decimal:
    """The order value cap: refuse an order worth more than `limit` USD; returns `value`."""
    if value > limit:
        raise OrderValueExceedsLimit(f"Order value {describe_amount(value)} USD exceeds the limit of {limit} USD")
    return value


def buy_cost(value: Decimal) -> Decimal:
    """What a buyer pays for a trade worth `value`: rounded up to the cent (never less than the arithmetic)."""
    return round_up(value, USD_SCALE)


def sell_proceeds(value: Decimal) -> Decimal:
    """What a seller receives for a trade worth `value`: rounded down to the cent (never more)."""
    return round_down(value, USD_SCALE)


def trade_value(side: OrderSide, value: Decimal) -> Decimal:
    """Cost (buy) or proceeds (sell) of a trade worth `value`."""
    return buy_cost(value) if side is OrderSide.BUY else sell_proceeds(value)


@dataclass(frozen=True, slots=True)
class BuyFunding:
    """Where a buy's cost comes from: first the reservation, then available cash; the rest of
    the reservation goes back to available."""

    from_held: Decimal
    from_available: Decimal
    refund: Decimal


def fund_buy(cost: Decimal, held: Decimal) -> BuyFunding:
    from_held = min(cost, held)
    return BuyFunding(from_held=from_held, from_available=cost - from_held, refund=held - from_held)


def cost_basis_out(units: Decimal, cost_basis: Decimal, quantity: Decimal) -> Decimal:
    """The cost basis that leaves a holding of `units` (worth `cost_basis`) with `quantity` units,
    at the holding's average cost, to the cent (half-even); all of it when everything is sold."""
    if quantity >= units:
        return Decimal(cost_basis)
    return Decimal(cost_basis * quantity / units).quantize(CENT, rounding=ROUND_HALF_EVEN)


# --- triggers ---------------------------------------------------------------------------------


def crossed(direction: str, trigger: Decimal, price: Decimal) -> bool:
    return price <= trigger if direction == BELOW else price >= trigger


@dataclass(frozen=True, slots=True)
class Trigger:
    direction: str
    price: Decimal


def trigger_of(order: Order) -> Trigger:
    """Where an order waits in the trigger index, by type and stage (docs/api.md: Orders, trigger rules)."""
    kind = order.order_type
    buy = kind.side is OrderSide.BUY
    if kind in (OrderType.LIMIT_BUY, OrderType.LIMIT_SELL) or (kind in STOP_LIMIT and order.stage == "limit"):
        assert order.price is not None
        return Trigger(BELOW if buy else ABOVE, order.price)
    assert order.stop_price is not None
    if kind in (OrderType.TAKE_PROFIT_BUY, OrderType.TAKE_PROFIT_SELL):
        return Trigger(BELOW if buy else ABOVE, order.stop_price)
    # stop-loss, stop-limit at its stop stage, trailing stops: a buy stop sits above the market
    return Trigger(ABOVE if buy else BELOW, order.stop_price)


def trailing_stop(order_type: OrderType, anchor: Decimal, amount: Decimal | None, percent: Decimal | None) -> Decimal:
    """The stop a trailing order keeps at its distance from the best price seen (8 places,
    rounded away from the market so the stop is never nearer than the distance asked for)."""
    sell = order_type is OrderType.TRAILING_STOP_SELL
    if amount is not None:
        stop = anchor - amount if sell else anchor + amount
    else:
        assert percent is not None
        factor = (100 - percent) / 100 if sell else (100 + percent) / 100
        stop = anchor * factor
    return stop.quantize(PRICE_PLACES, rounding=ROUND_DOWN if sell else ROUND_UP)


# --- placement --------------------------------------------------------------------------------


def check_placement(request: OrderCreate, market_price: Decimal, now: datetime) -> None:
    """Rules that depend on the market and the time: refused here, nothing is stored."""
    if request.time_in_force is TimeInForce.GTD:
        assert request.expires_at is not None
        if request.expires_at <= now + timedelta(seconds=1):
            raise ValidationFailed.field("expires_at", "must be in the future")
    if request.time_in_force in (TimeInForce.IOC, TimeInForce.FOK) and request.order_type not in LIMIT_LIKE:
        raise ValidationFailed.field("time_in_force", "ioc and fok apply to limit and take-profit orders only")
    if request.order_type in STOP_LIKE:
        assert request.stop_price is not None
        buy = request.order_type.side is OrderSide.BUY
        if (buy and market_price >= request.stop_price) or (not buy and market_price <= request.stop_price):
            side = "above" if buy else "below"
            raise InvalidOrder(
                f"stop_price must be {side} the market price {market_price}; this stop would trigger at once"
            )
    if request.order_type is OrderType.TRAILING_STOP_SELL:
        stop = trailing_stop(request.order_type, market_price, request.trail_amount, request.trail_percent)
        if stop <= 0:
            raise ValidationFailed.field("trail_amount", f"must be below the market price {market_price}")


def marketable(request: OrderCreate, market_price: Decimal) -> bool:
    """A limit or take-profit order whose price the market already satisfies fills at once."""
    if request.order_type not in LIMIT_LIKE:
        return False
    bound = request.price if request.order_type in (OrderType.LIMIT_BUY, OrderType.LIMIT_SELL) else request.stop_price
    assert bound is not None
    direction = BELOW if request.order_type.side is OrderSide.BUY else ABOVE
    return crossed(direction, bound, market_price)


def worse_than_bound(side: OrderSide, market_price: Decimal, bound: Decimal) -> bool:
    """A market order's client price is a protection bound: the market may not be worse."""
    return market_price > bound if side is OrderSide.BUY else market_price < bound


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a resting order holds (USD for buys, units for sells) and its trailing anchor."""

    held: Decimal
    anchor: Decimal | None


def reservation(
    request: OrderCreate, market_price: Decimal, *, stop_buy_margin: Decimal, value_limit: Decimal
) -> Reservation:
    """A sell holds its units; a buy holds the most it may pay, to the cent, rounded up.

    Limit and stop-limit buys hold `quantity * price`, take-profit buys `quantity * stop_price`;
    stop-loss and trailing buys fill at the market once triggered, so they hold their stop
    plus `stop_buy_margin` (a fraction) for slippage. A buy holding more than the value cap is
    refused.
    """
    anchor = market_price if request.order_type in TRAILING else None
    if request.order_type.side is OrderSide.SELL:
        return Reservation(request.quantity, anchor)
    margin = 1 + stop_buy_margin
    kind = request.order_type
    if kind in (OrderType.LIMIT_BUY, OrderType.STOP_LIMIT_BUY):
        assert request.price is not None
        per_unit = request.price
    elif kind is OrderType.TAKE_PROFIT_BUY:
        assert request.stop_price is not None
        per_unit = request.stop_price
    elif kind is OrderType.STOP_LOSS_BUY:
        assert request.stop_price is not None
        per_unit = request.stop_price * margin
    else:
        assert anchor is not None
        per_unit = trailing_stop(kind, anchor, request.trail_amount, request.trail_percent) * margin
    value = check_order_value(request.quantity * per_unit, value_limit)
    return Reservation(buy_cost(value), anchor)


def initial_stop(request: OrderCreate, anchor: Decimal | None) -> Decimal | None:
    """The stop an order starts with: the client's, or a trailing order's from its anchor."""
    if request.order_type in TRAILING:
        assert anchor is not None
        return trailing_stop(request.order_type, anchor, request.trail_amount, request.trail_percent)
    return request.stop_price
