"""Our entities in Alpaca's shapes (and nothing else: no reads, no rules)."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from cnop.common.entities.asset import Asset
from cnop.common.entities.order import Order, OrderSide, OrderStatus, OrderType, TimeInForce
from cnop.services.alpaca.ids import asset_uuid, order_uuid
from cnop.services.alpaca.schemas import AlpacaAsset, AlpacaOrder, text
from cnop.services.alpaca.symbols import pair

STATUS = {
    OrderStatus.PENDING: "pending_new",
    OrderStatus.CONFIRMED: "accepted",
    OrderStatus.QUEUED: "new",
    OrderStatus.PROCESSING: "accepted",
    OrderStatus.COMPLETED: "filled",
    OrderStatus.CANCELLED: "canceled",
    OrderStatus.EXPIRED: "expired",
    OrderStatus.FAILED: "rejected",
}
# Alpaca's `status` filter: what counts as open and closed.
OPEN_STATUSES = frozenset(s for s in OrderStatus if not s.is_final)

KIND = {
    OrderType.MARKET_BUY: "market",
    OrderType.MARKET_SELL: "market",
    OrderType.LIMIT_BUY: "limit",
    OrderType.LIMIT_SELL: "limit",
    OrderType.STOP_LOSS_BUY: "stop",
    OrderType.STOP_LOSS_SELL: "stop",
    OrderType.STOP_LIMIT_BUY: "stop_limit",
    OrderType.STOP_LIMIT_SELL: "stop_limit",
    # A take-profit waits for the price to reach its trigger and then fills there: a limit order.
    OrderType.TAKE_PROFIT_BUY: "limit",
    OrderType.TAKE_PROFIT_SELL: "limit",
    OrderType.TRAILING_STOP_BUY: "trailing_stop",
    OrderType.TRAILING_STOP_SELL: "trailing_stop",
}
NATIVE_TYPE = {
    ("market", "buy"): OrderType.MARKET_BUY,
    ("market", "sell"): OrderType.MARKET_SELL,
    ("limit", "buy"): OrderType.LIMIT_BUY,
    ("limit", "sell"): OrderType.LIMIT_SELL,
    ("stop", "buy"): OrderType.STOP_LOSS_BUY,
    ("stop", "sell"): OrderType.STOP_LOSS_SELL,
    ("stop_limit", "buy"): OrderType.STOP_LIMIT_BUY,
    ("stop_limit", "sell"): OrderType.STOP_LIMIT_SELL,
    ("trailing_stop", "buy"): OrderType.TRAILING_STOP_BUY,
    ("trailing_stop", "sell"): OrderType.TRAILING_STOP_SELL,
}
PERCENT_PLACES = Decimal("0.0001")


def order(order: Order) -> AlpacaOrder:
    kind = KIND[order.order_type]
    filled = order.status is OrderStatus.COMPLETED
    take_profit = order.order_type in (OrderType.TAKE_PROFIT_BUY, OrderType.TAKE_PROFIT_SELL)
    if order.order_type.is_market:
        limit_price = None  # a market order's `price` is what it executed at, or a protection bound
    elif take_profit:
        limit_price = order.stop_price
    else:
        limit_price = order.price
    stop_price = order.stop_price if kind in ("stop", "stop_limit", "trailing_stop") else None
    trailing = kind == "trailing_stop"
    closed_at = order.updated_at
    return AlpacaOrder(
        id=order_uuid(order.order_id),
        client_order_id=order.client_order_id or order_uuid(order.order_id),
        created_at=order.created_at,
        updated_at=order.updated_at,
        submitted_at=order.created_at,
        filled_at=order.executed_at if filled else None,
        expired_at=closed_at if order.status is OrderStatus.EXPIRED else None,
        expires_at=order.expires_at,
        canceled_at=order.cancelled_at if order.status is OrderStatus.CANCELLED else None,
        failed_at=closed_at if order.status is OrderStatus.FAILED else None,
        asset_id=asset_uuid(order.asset_id),
        symbol=pair(order.asset_id),
        qty=text(order.quantity) or "0",
        filled_qty=text(order.quantity) if filled else "0",
        filled_avg_price=text(order.executed_price) if filled else None,
        order_type=kind,
        type=kind,
        side="buy" if order.side is OrderSide.BUY else "sell",
        position_intent="buy_to_open" if order.side is OrderSide.BUY else "sell_to_close",
        # gtd has no Alpaca name: it is good till cancelled, and `expires_at` says until when.
        time_in_force=TimeInForce.GTC.value if order.time_in_force is TimeInForce.GTD else order.time_in_force.value,
        limit_price=text(limit_price),
        stop_price=text(stop_price),
        status=STATUS[order.status],
        trail_percent=text(order.trail_percent) if trailing else None,
        trail_price=text(order.trail_amount) if trailing else None,
        hwm=text(order.trail_anchor) if trailing else None,
    )


def asset(asset: Asset) -> AlpacaAsset:
    increment = Decimal(1).scaleb(-asset.scale)
    return AlpacaAsset(
        id=asset_uuid(asset.asset_id),
        symbol=pair(asset.asset_id),
        name=asset.name,
        status="active" if asset.is_active else "inactive",
        tradable=asset.is_active,
        min_order_size=text(asset.min_quantity) or "0",
        min_trade_increment=text(increment) or "0",
        price_increment="0.00000001",
    )


def ratio(change: Decimal, reference: Decimal) -> str | None:
    """A change as a fraction of its reference (Alpaca's `plpc`: 0.05 for 5 %), four places."""
    if reference == 0:
        return None
    return text((change / reference).quantize(PERCENT_PLACES, rounding=ROUND_HALF_EVEN))
