"""What an order would do if placed now: its value, whether it fills at once, what it reserves.

The same checks as placement, in the same order, without writing anything; the refusal it
would meet is returned (not raised) so an order ticket can show it before the user submits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from cnop.common.entities.order import OrderCreate, OrderSide, TimeInForce
from cnop.common.exceptions import CnopError, InsufficientFunds, InsufficientHoldings
from cnop.services.order.rules import check_placement, marketable, reservation, trade_value
from cnop.services.order.service import OrderService


@dataclass(frozen=True, slots=True)
class OrderPreview:
    side: OrderSide
    asset_id: str
    scale: int
    quantity: Decimal
    market_price: Decimal | None = None
    fills_now: bool = False
    value: Decimal | None = None
    """Cost (buy, rounded up) or proceeds (sell, rounded down) at the market price, in USD."""
    reserve_cash: Decimal = Decimal(0)
    reserve_units: Decimal = Decimal(0)
    available_cash: Decimal = Decimal(0)
    available_units: Decimal = Decimal(0)
    refusal: CnopError | None = None


async def preview_order(trading: OrderService, username: str, request: OrderCreate) -> OrderPreview:
    side = request.order_type.side
    try:
        asset = await trading.tradeable_asset(request.asset_id)
    except CnopError as exc:
        return OrderPreview(side, request.asset_id, 8, request.quantity, refusal=exc)
    balance = await trading.balances.get_balance(username)
    holding = await trading.holdings.get_holding(username, asset.asset_id)
    base = OrderPreview(
        side,
        asset.asset_id,
        asset.scale,
        request.quantity,
        available_cash=balance.available,
        available_units=holding.available if holding is not None else Decimal(0),
    )
    try:
        trading.check_quantity(asset, request.quantity)
        market_price = trading.prices.fresh_price(asset.asset_id, trading.settings.max_price_age_seconds)
        fills_now = request.order_type.is_market
        if not fills_now:
            check_placement(request, market_price, trading.clock.now())
            fills_now = marketable(request, market_price)
        if fills_now:
            quote = trading.quote(asset, request.quantity)
            result = _with(base, market_price=market_price, fills_now=True, value=trade_value(side, quote.value))
        elif request.time_in_force in (TimeInForce.IOC, TimeInForce.FOK):
            result = _with(base, market_price=market_price, value=trade_value(side, request.quantity * market_price))
        else:
            held = reservation(
                request,
                market_price,
                stop_buy_margin=trading.settings.stop_buy_reserve_margin,
                value_limit=trading.settings.order_value_limit,
            ).held
            result = _with(
                base,
                market_price=market_price,
                value=trade_value(side, request.quantity * market_price),
                reserve_cash=held if side is OrderSide.BUY else Decimal(0),
                reserve_units=held if side is OrderSide.SELL else Decimal(0),
            )
    except CnopError as exc:
        return _with(base, refusal=exc)
    return _with(result, refusal=_shortfall(result))


def _shortfall(preview: OrderPreview) -> CnopError | None:
    """The refusal placement would meet for lack of cash or units, if any."""
    if preview.side is OrderSide.BUY:
        need = preview.value if preview.fills_now else preview.reserve_cash
        if need is not None and need > preview.available_cash:
            return InsufficientFunds(f"This needs {need} USD; you have {preview.available_cash} USD available")
        return None
    if preview.quantity <= preview.available_units:
        return None
    return InsufficientHoldings(
        f"This needs {preview.quantity} {preview.asset_id}; you have {preview.available_units} available"
    )


def _with(preview: OrderPreview, **changes: Any) -> OrderPreview:
    return replace(preview, **changes)
