"""Order service use cases: market orders, each one store transaction (docs/storage.md §3)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from cnop.common.clock import Clock
from cnop.common.config import Settings
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.database.store import ItemStore
from cnop.common.database.transaction import GuardFailed, Leg, Legs
from cnop.common.entities.asset import Asset
from cnop.common.entities.order import Order, OrderCreate, OrderSide, OrderStatus, OrderType, TimeInForce
from cnop.common.events import EventBus
from cnop.common.exceptions import (
    AssetNotFoundForOrder,
    AssetNotTradeable,
    IdempotencyInProgress,
    InsufficientFunds,
    InsufficientHoldings,
    InsufficientInventory,
    InvalidOrder,
    PriceProtection,
    StoreError,
    ValidationFailed,
)
from cnop.common.metrics import Metrics
from cnop.common.money import USD_SCALE, places, round_down
from cnop.market.prices import PriceBook
from cnop.services.order.placement import Placement
from cnop.services.order.release import Release
from cnop.services.order.rules import (
    buy_cost,
    check_order_value,
    check_placement,
    marketable,
    sell_proceeds,
    worse_than_bound,
)
from cnop.services.order.settlement import Settlement, UnitsMissing


@dataclass(frozen=True, slots=True)
class Quote:
    """The server's price for an order and what it comes to."""

    price: Decimal
    value: Decimal


class OrderService:
    def __init__(
        self,
        store: ItemStore,
        orders: OrderDAO,
        assets: AssetDAO,
        balances: BalanceDAO,
        holdings: HoldingDAO,
        prices: PriceBook,
        settings: Settings,
        clock: Clock,
        metrics: Metrics,
        events: EventBus,
        settlement: Settlement,
        placement: Placement,
        release: Release,
    ) -> None:
        self.store = store
        self.orders = orders
        self.assets = assets
        self.balances = balances
        self.holdings = holdings
        self.prices = prices
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.events = events
        self.settlement = settlement
        self.placement = placement
        self.release = release

    async def tradeable_asset(self, asset_id: str) -> Asset:
        asset = await self.assets.find_asset(asset_id)
        if asset is None:
            raise AssetNotFoundForOrder(f"Asset {asset_id} not found")
        if not asset.is_active:
            raise AssetNotTradeable(f"Asset {asset_id} is not tradeable at the moment")
        return asset

    @staticmethod
    def check_quantity(asset: Asset, quantity: Decimal) -> None:
        if places(quantity) > asset.scale:
            raise ValidationFailed.field(
                "quantity", f"must have at most {asset.scale} decimal places for {asset.asset_id}"
            )
        if quantity < asset.min_quantity:
            raise ValidationFailed.field("quantity", f"must be at least {asset.min_quantity} {asset.asset_id}")

    def quote(self, asset: Asset, quantity: Decimal, price: Decimal | None = None) -> Quote:
        """The server's fresh price (503 if stale) and the order's value, within the value cap."""
        if price is None:
            price = self.prices.fresh_price(asset.asset_id, self.settings.max_price_age_seconds)
        return Quote(price, check_order_value(quantity * price, self.settings.order_value_limit))

    async def place_order(self, username: str, request: OrderCreate) -> Order:
        asset = await self.tradeable_asset(request.asset_id)
        self.check_quantity(asset, request.quantity)
        if not request.order_type.is_market:
            order = await self._place_resting(username, asset, request)
            self.metrics.record_order(order.order_type.value, order.status.value)
            return order
        quote = self.quote(asset, request.quantity)
        if request.price is not None and worse_than_bound(request.order_type.side, quote.price, request.price):
            raise PriceProtection(f"The market price {quote.price} is worse than your bound {request.price}")
        return await self._fill_market(username, asset, request, quote)

    async def place_notional_order(
        self,
        username: str,
        order_type: OrderType,
        asset_id: str,
        notional: Decimal,
        *,
        time_in_force: TimeInForce = TimeInForce.GTC,
        client_order_id: str | None = None,
    ) -> Order:
        """A market order for `notional` USD: the units the current price buys, rounded down, at that price."""
        if not order_type.is_market:
            raise ValidationFailed.field("notional", "applies to market orders only")
        if notional <= 0 or places(notional) > USD_SCALE:
            raise ValidationFailed.field("notional", "must be a positive USD amount with at most 2 decimal places")
        asset = await self.tradeable_asset(asset_id)
        price = self.prices.fresh_price(asset.asset_id, self.settings.max_price_age_seconds)
        quantity = round_down(notional / price, asset.scale)
        if quantity < asset.min_quantity or quantity <= 0:
            raise ValidationFailed.field(
                "notional", f"buys less than the minimum of {asset.min_quantity} {asset.asset_id} at {price} USD"
            )
        request = OrderCreate(
            order_type=order_type,
            asset_id=asset.asset_id,
            quantity=quantity,
            time_in_force=time_in_force,
            client_order_id=client_order_id,
        )
        return await self._fill_market(username, asset, request, self.quote(asset, quantity, price))

    async def _fill_market(self, username: str, asset: Asset, request: OrderCreate, quote: Quote) -> Order:
        if request.order_type.side is OrderSide.BUY:
            order = await self._market_buy(username, asset, request, quote)
        else:
            order = await self._market_sell(username, asset, request, quote)
        self.metrics.record_order(order.order_type.value, order.status.value)
        self.events.publish(username, "order.completed", order)
        return order

    async def _place_resting(self, username: str, asset: Asset, request: OrderCreate) -> Order:
        market_price = self.prices.fresh_price(asset.asset_id, self.settings.max_price_age_seconds)
        check_placement(request, market_price, self.clock.now())
        if marketable(request, market_price):
            # The market already satisfies the limit: fill now at the market price, like a market
            # order bounded by the limit (which the market price is at or better than).
            quote = self.quote(asset, request.quantity)
            if request.order_type.side is OrderSide.BUY:
                order = await self._market_buy(username, asset, request, quote)
            else:
                order = await self._market_sell(username, asset, request, quote)
            self.events.publish(username, "order.completed", order)
            return order
        if request.time_in_force in (TimeInForce.IOC, TimeInForce.FOK):
            return await self.placement.record_unfilled(username, request)
        return await self.placement.queue(username, request, market_price)

    async def cancel_order(self, username: str, order_id: str) -> Order:
        """Cancel a queued order, releasing its reservation in the same transaction."""
        return await self.release.cancel(username, order_id)

    def _new_order(self, username: str, request: OrderCreate, quote: Quote, total: Decimal) -> Order:
        """An order filled now, at the quote."""
        order = self.placement.new_order(username, request, OrderStatus.COMPLETED, Decimal(0), None)
        return order.model_copy(
            update={"executed_price": quote.price, "total_amount": total, "executed_at": order.created_at}
        )

    async def _market_buy(self, username: str, asset: Asset, request: OrderCreate, quote: Quote) -> Order:
        order = self._new_order(username, request, quote, buy_cost(quote.value))
        try:
            legs = Legs()
            await self.orders.create_order(order, tx=legs)
            await self.settlement.settle_buy(order, legs)
        except GuardFailed as failed:
            raise market_refusal(failed, order) from failed
        assert order.total_amount is not None
        self.metrics.record_trade(order.total_amount)
        return order

    async def _market_sell(self, username: str, asset: Asset, request: OrderCreate, quote: Quote) -> Order:
        proceeds = sell_proceeds(quote.value)
        if proceeds <= 0:
            raise InvalidOrder("The order is worth less than 0.01 USD")

        async def filled(basis_out: Decimal, legs: Legs) -> Order:
            order = self._new_order(username, request, quote, proceeds).model_copy(
                update={"realized_pnl": proceeds - basis_out}
            )
            return await self.orders.create_order(order, tx=legs)

        try:
            order = await self.settlement.settle_sell(
                username, asset.asset_id, request.quantity, filled, from_held=False
            )
        except UnitsMissing as missing:
            raise InsufficientHoldings(
                f"You have {missing.have} {asset.asset_id} available, not {request.quantity}"
            ) from missing
        except GuardFailed as failed:
            raise market_refusal(failed, None) from failed
        self.metrics.record_trade(proceeds)
        return order


def market_refusal(failed: GuardFailed, order: Order | None) -> Exception:
    """The domain error for a market order's failed leg."""
    if failed.leg is Leg.BALANCE and order is not None:
        return InsufficientFunds(f"Buying costs {order.total_amount} USD, more than your available cash")
    if failed.leg is Leg.HOUSE and order is not None:
        return InsufficientInventory(f"The house cannot supply {order.quantity} {order.asset_id} now")
    if failed.leg is Leg.IDEMPOTENCY:
        return IdempotencyInProgress()
    return StoreError(f"unexpected condition failure on the {failed.leg.value} leg")
