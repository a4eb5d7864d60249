"""Order service use cases: market orders, each one store transaction (design §6)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from cnop.common.clock import Clock
from cnop.common.config import Settings
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.database import keys
from cnop.common.database.store import Ge, ItemStore, Op, Update
from cnop.common.entities.asset import Asset
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.order import Order, OrderCreate, OrderSide, OrderStatus
from cnop.common.exceptions import (
    AssetNotFoundForOrder,
    AssetNotTradeable,
    ConditionFailed,
    IdempotencyInProgress,
    InsufficientFunds,
    InsufficientHoldings,
    InsufficientInventory,
    InvalidOrder,
    OrderNotCancellable,
    OrderValueExceedsLimit,
    PriceProtection,
    StoreError,
    ValidationFailed,
)
from cnop.common.ids import new_id
from cnop.common.metrics import Metrics
from cnop.common.money import USD_SCALE, places, round_down, round_up
from cnop.market.prices import PriceBook

# A sell recomputes the cost basis from the holding it read; if another order changed the
# holding meanwhile, it reads again. Bounded: contention this high is a client bug.
MAX_SELL_ATTEMPTS = 16
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

    def quote(self, asset: Asset, quantity: Decimal) -> Quote:
        """The server's fresh price (503 if stale) and the order's value, within the value cap."""
        price = self.prices.fresh_price(asset.asset_id, self.settings.max_price_age_seconds)
        value = quantity * price
        if value > self.settings.order_value_limit:
            raise OrderValueExceedsLimit(
                f"Order value {value.quantize(CENT)} USD exceeds the limit of {self.settings.order_value_limit} USD"
            )
        return Quote(price, value)

    async def place_order(self, username: str, request: OrderCreate, apply_op: Op | None = None) -> Order:
        asset = await self.tradeable_asset(request.asset_id)
        self.check_quantity(asset, request.quantity)
        if not request.order_type.is_market:
            raise InvalidOrder(f"{request.order_type.value} orders are not accepted yet")
        quote = self.quote(asset, request.quantity)
        if request.price is not None:
            worse = (
                quote.price > request.price if request.order_type.side is OrderSide.BUY else quote.price < request.price
            )
            if worse:
                raise PriceProtection(f"The market price {quote.price} is worse than your bound {request.price}")
        if request.order_type.side is OrderSide.BUY:
            order = await self._market_buy(username, asset, request, quote, apply_op)
        else:
            order = await self._market_sell(username, asset, request, quote, apply_op)
        self.metrics.record_order(order.order_type.value, order.status.value)
        return order

    async def cancel_order(self, username: str, order_id: str) -> Order:
        order = await self.orders.get_order(username, order_id)
        if order.status.is_final:
            raise OrderNotCancellable(f"The order is already {order.status.value}")
        raise OrderNotCancellable(f"An order that is {order.status.value} cannot be cancelled")

    def _new_order(self, username: str, request: OrderCreate, quote: Quote, total: Decimal) -> Order:
        now = self.clock.now()
        return Order(
            order_id=new_id(),
            username=username,
            client_order_id=request.client_order_id,
            order_type=request.order_type,
            asset_id=request.asset_id,
            quantity=request.quantity,
            price=request.price,
            time_in_force=request.time_in_force,
            status=OrderStatus.COMPLETED,
            executed_price=quote.price,
            total_amount=total,
            created_at=now,
            updated_at=now,
            executed_at=now,
        )

    def _house_op(self, asset_id: str, quantity: Decimal, cash: Decimal) -> Op:
        """House inventory moves the other way; it may never hand out units it does not hold."""
        return Update(
            keys.INVENTORY,
            keys.house_inventory_key(asset_id),
            add={"quantity": quantity, "cash": cash},
            condition=Ge("quantity", -quantity) if quantity < 0 else None,
        )

    async def _market_buy(
        self, username: str, asset: Asset, request: OrderCreate, quote: Quote, apply_op: Op | None
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
            self._house_op(asset.asset_id, -order.quantity, cost),  # 5 (guard: house holds the units)
        ]
        if apply_op is not None:
            ops.append(apply_op)  # 6
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
        self, username: str, asset: Asset, request: OrderCreate, quote: Quote, apply_op: Op | None
    ) -> Order:
        proceeds = round_down(quote.value, USD_SCALE)  # the seller never receives more than the arithmetic
        if proceeds <= 0:
            raise InvalidOrder("The order is worth less than 0.01 USD")
        for _ in range(MAX_SELL_ATTEMPTS):
            holding = await self.holdings.get_holding_item(username, asset.asset_id)
            if holding is None or holding["available"] < request.quantity:
                have = holding["available"] if holding is not None else Decimal(0)
                raise InsufficientHoldings(f"You have {have} {asset.asset_id} available, not {request.quantity}")
            quantity_held = holding["available"] + holding["held"]
            if request.quantity == quantity_held:
                basis_out = holding["cost_basis"]
            else:
                basis_out = (holding["cost_basis"] * request.quantity / quantity_held).quantize(
                    CENT, rounding=ROUND_HALF_EVEN
                )
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
                    expected_version=holding.get("version", Decimal(0)),
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
                self._house_op(asset.asset_id, order.quantity, -proceeds),  # 5
            ]
            if apply_op is not None:
                ops.append(apply_op)  # 6
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
