"""Order service use cases: market orders, each one store transaction (design §6)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from cnop.common.clock import Clock
from cnop.common.config import Settings
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import EXACT_COST_BASIS_ATTEMPTS, HoldingDAO, cost_basis_out
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.database.store import ItemStore, Op
from cnop.common.entities.asset import Asset
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.order import Order, OrderCreate, OrderSide, OrderStatus, OrderType, TimeInForce
from cnop.common.exceptions import (
    AssetNotFoundForOrder,
    AssetNotTradeable,
    ConditionFailed,
    IdempotencyInProgress,
    InsufficientFunds,
    InsufficientHoldings,
    InsufficientInventory,
    InvalidOrder,
    OrderValueExceedsLimit,
    PriceProtection,
    StoreError,
    ValidationFailed,
)
from cnop.common.idempotency import MarkApplied
from cnop.common.ids import new_id
from cnop.common.metrics import Metrics
from cnop.common.money import USD_SCALE, describe_amount, places, round_down, round_up
from cnop.market.prices import PriceBook
from cnop.services.order.resting import RestingOrders

# A sell reads the holding, then applies under guards; a guard that fails because another order
# changed the holding meanwhile means read again (see holding_dao.EXACT_COST_BASIS_ATTEMPTS).
MAX_SELL_ATTEMPTS = 32
CENT = Decimal("0.01")


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
        resting: RestingOrders,
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
        self.resting = resting

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
        value = quantity * price
        if value > self.settings.order_value_limit:
            raise OrderValueExceedsLimit(
                f"Order value {describe_amount(value)} USD exceeds the limit of {self.settings.order_value_limit} USD"
            )
        return Quote(price, value)

    async def place_order(self, username: str, request: OrderCreate, apply_op: MarkApplied | None = None) -> Order:
        asset = await self.tradeable_asset(request.asset_id)
        self.check_quantity(asset, request.quantity)
        if not request.order_type.is_market:
            order = await self._place_resting(username, asset, request, apply_op)
            self.metrics.record_order(order.order_type.value, order.status.value)
            return order
        quote = self.quote(asset, request.quantity)
        if request.price is not None:
            worse = (
                quote.price > request.price if request.order_type.side is OrderSide.BUY else quote.price < request.price
            )
            if worse:
                raise PriceProtection(f"The market price {quote.price} is worse than your bound {request.price}")
        return await self._fill_market(username, asset, request, quote, apply_op)

    async def place_notional_order(
        self,
        username: str,
        order_type: OrderType,
        asset_id: str,
        notional: Decimal,
        *,
        time_in_force: TimeInForce = TimeInForce.GTC,
        client_order_id: str | None = None,
        apply_op: MarkApplied | None = None,
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
        return await self._fill_market(username, asset, request, self.quote(asset, quantity, price), apply_op)

    async def _fill_market(
        self, username: str, asset: Asset, request: OrderCreate, quote: Quote, apply_op: MarkApplied | None
    ) -> Order:
        if request.order_type.side is OrderSide.BUY:
            order = await self._market_buy(username, asset, request, quote, apply_op)
        else:
            order = await self._market_sell(username, asset, request, quote, apply_op)
        self.metrics.record_order(order.order_type.value, order.status.value)
        self.resting.events.publish(username, "order.completed", order)
        return order

    async def _place_resting(
        self, username: str, asset: Asset, request: OrderCreate, apply_op: MarkApplied | None
    ) -> Order:
        market_price = self.prices.fresh_price(asset.asset_id, self.settings.max_price_age_seconds)
        self.resting.check_placement(request, market_price)
        if self.resting.marketable(request, market_price):
            # The market already satisfies the limit: fill now at the market price, like a market
            # order bounded by the limit (which the market price is at or better than).
            quote = self.quote(asset, request.quantity)
            if request.order_type.side is OrderSide.BUY:
                order = await self._market_buy(username, asset, request, quote, apply_op)
            else:
                order = await self._market_sell(username, asset, request, quote, apply_op)
            self.resting.events.publish(username, "order.completed", order)
            return order
        if request.time_in_force in (TimeInForce.IOC, TimeInForce.FOK):
            return await self.resting.record_unfilled(username, request, apply_op)
        return await self.resting.queue(username, request, asset, market_price, apply_op)

    async def cancel_order(self, username: str, order_id: str) -> Order:
        """Cancel a queued order, releasing its reservation in the same transaction."""
        return await self.resting.cancel(username, order_id)

    def _new_order(self, username: str, request: OrderCreate, quote: Quote, total: Decimal) -> Order:
        """An order filled now, at the quote."""
        order = self.resting.new_order(username, request, OrderStatus.COMPLETED, Decimal(0), None)
        return order.model_copy(
            update={"executed_price": quote.price, "total_amount": total, "executed_at": order.created_at}
        )

    async def _market_buy(
        self, username: str, asset: Asset, request: OrderCreate, quote: Quote, apply_op: MarkApplied | None
    ) -> Order:
        cost = round_up(quote.value, USD_SCALE)  # the buyer never pays less than the arithmetic
        order = self._new_order(username, request, quote, cost)
        now = order.created_at
        entry = BalanceTransaction(
            transaction_id=new_id(),
            username=username,
            transaction_type=TransactionType.ORDER_PAYMENT,
            amount=cost,
            available_change=-cost,
            held_change=Decimal("0.00"),
            description=f"Bought {order.quantity} {asset.asset_id} at {quote.price} USD",
            order_id=order.order_id,
            created_at=now,
        )
        ops: list[Op] = [
            self.orders.create_order_op(order),  # 0
            *self.balances.entry_ops(entry),  # 1 ledger, 2 balance (guard: available >= cost)
            self.holdings.change_op(username, asset.asset_id, now, available=order.quantity, cost_basis=cost),  # 3
            self.holdings.asset_transaction_op(  # 4
                username=username,
                asset_id=asset.asset_id,
                transaction_id=new_id(),
                transaction_type="buy",
                quantity=order.quantity,
                available_change=order.quantity,
                held_change=Decimal(0),
                price=quote.price,
                total=cost,
                order_id=order.order_id,
                now=now,
            ),
            self.assets.house_trade_op(asset.asset_id, -order.quantity, cost),  # 5 (guard: house holds the units)
        ]
        if apply_op is not None:
            ops.append(apply_op(order.order_id))  # 6
        try:
            await self.store.transact(ops)
        except ConditionFailed as exc:
            if exc.index == 2:
                raise InsufficientFunds(f"Buying costs {cost} USD, more than your available cash") from exc
            if exc.index == 5:
                raise InsufficientInventory(f"The house cannot supply {order.quantity} {asset.asset_id} now") from exc
            if exc.index == 6:
                raise IdempotencyInProgress() from exc
            raise StoreError(f"unexpected condition failure at op {exc.index}") from exc
        self.metrics.record_trade(cost)
        return order

    async def _market_sell(
        self, username: str, asset: Asset, request: OrderCreate, quote: Quote, apply_op: MarkApplied | None
    ) -> Order:
        proceeds = round_down(quote.value, USD_SCALE)  # the seller never receives more than the arithmetic
        if proceeds <= 0:
            raise InvalidOrder("The order is worth less than 0.01 USD")
        for attempt in range(MAX_SELL_ATTEMPTS):
            holding = await self.holdings.get_holding_item(username, asset.asset_id)
            if holding is None or holding["available"] < request.quantity:
                have = holding["available"] if holding is not None else Decimal(0)
                raise InsufficientHoldings(f"You have {have} {asset.asset_id} available, not {request.quantity}")
            basis_out = cost_basis_out(holding, request.quantity)
            order = self._new_order(username, request, quote, proceeds).model_copy(
                update={"realized_pnl": proceeds - basis_out}
            )
            now = order.created_at
            entry = BalanceTransaction(
                transaction_id=new_id(),
                username=username,
                transaction_type=TransactionType.ORDER_PROCEEDS,
                amount=proceeds,
                available_change=proceeds,
                held_change=Decimal("0.00"),
                description=f"Sold {order.quantity} {asset.asset_id} at {quote.price} USD",
                order_id=order.order_id,
                created_at=now,
            )
            ops: list[Op] = [
                self.orders.create_order_op(order),  # 0
                *self.balances.entry_ops(entry),  # 1, 2
                self.holdings.change_op(  # 3 (guard: available >= quantity, same version as read)
                    username,
                    asset.asset_id,
                    now,
                    available=-order.quantity,
                    cost_basis=-basis_out,
                    expected_version=holding["version"] if attempt < EXACT_COST_BASIS_ATTEMPTS else None,
                ),
                self.holdings.asset_transaction_op(  # 4
                    username=username,
                    asset_id=asset.asset_id,
                    transaction_id=new_id(),
                    transaction_type="sell",
                    quantity=order.quantity,
                    available_change=-order.quantity,
                    held_change=Decimal(0),
                    price=quote.price,
                    total=proceeds,
                    order_id=order.order_id,
                    now=now,
                ),
                self.assets.house_trade_op(asset.asset_id, order.quantity, -proceeds),  # 5
            ]
            if apply_op is not None:
                ops.append(apply_op(order.order_id))  # 6
            try:
                await self.store.transact(ops)
            except ConditionFailed as exc:
                if exc.index == 3:
                    continue  # the holding changed since we read it: read again
                if exc.index == 6:
                    raise IdempotencyInProgress() from exc
                raise StoreError(f"unexpected condition failure at op {exc.index}") from exc
            self.metrics.record_trade(proceeds)
            return order
        raise StoreError("the holding kept changing; sell not applied")
