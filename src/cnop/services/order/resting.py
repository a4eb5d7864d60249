"""Resting orders: placement with a reservation, fills when the price crosses, cancel and expiry.

Every step is one store transaction whose first op is the order's own update, conditioned on
`status = queued` (and on the trigger the caller saw), so two trigger workers, or a cancel racing
a fill, can never both act on one order: exactly one transaction wins, the others change nothing.

Directions: an order indexed `below` fires when the price falls to or under its trigger; `above`
fires when the price rises to or over it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal

import structlog

from cnop.common.clock import Clock, isoformat
from cnop.common.config import Settings
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import EXACT_COST_BASIS_ATTEMPTS, HoldingDAO, cost_basis_out
from cnop.common.dao.order_dao import OrderDAO, order_from_item
from cnop.common.database import keys
from cnop.common.database.store import And, Eq, Item, ItemStore, Op, SortKey, Update, query_all
from cnop.common.entities.asset import Asset
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.order import Order, OrderCreate, OrderSide, OrderStatus, OrderType, TimeInForce
from cnop.common.events import EventBus
from cnop.common.exceptions import (
    ConditionFailed,
    IdempotencyInProgress,
    InsufficientFunds,
    InsufficientHoldings,
    InvalidOrder,
    OrderNotCancellable,
    OrderNotFound,
    OrderValueExceedsLimit,
    StoreError,
    ValidationFailed,
)
from cnop.common.idempotency import MarkApplied
from cnop.common.ids import new_id
from cnop.common.money import USD_SCALE, describe_amount, round_down, round_up

log = structlog.get_logger("cnop.orders.resting")

BELOW = "below"
ABOVE = "above"
PRICE_PLACES = Decimal("0.00000001")
CENT = Decimal("0.01")
INDEX_ATTRIBUTES = ("gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk", "gsi3pk", "gsi3sk")
MAX_FILL_ATTEMPTS = 32
LIMIT_LIKE = {OrderType.LIMIT_BUY, OrderType.LIMIT_SELL, OrderType.TAKE_PROFIT_BUY, OrderType.TAKE_PROFIT_SELL}
STOP_LIKE = {OrderType.STOP_LOSS_BUY, OrderType.STOP_LOSS_SELL, OrderType.STOP_LIMIT_BUY, OrderType.STOP_LIMIT_SELL}
TRAILING = {OrderType.TRAILING_STOP_BUY, OrderType.TRAILING_STOP_SELL}


# Builds the house inventory's side of a trade: (asset, units to the house, cash to the house).
HouseTrade = Callable[[str, Decimal, Decimal], Op]


def crossed(direction: str, trigger: Decimal, price: Decimal) -> bool:
    return price <= trigger if direction == BELOW else price >= trigger


@dataclass(frozen=True, slots=True)
class Trigger:
    direction: str
    price: Decimal


def trigger_of(order: Order) -> Trigger:
    """Where an order waits in the trigger index, by type and stage (api.md trigger rules)."""
    kind = order.order_type
    buy = kind.side is OrderSide.BUY
    if kind in (OrderType.LIMIT_BUY, OrderType.LIMIT_SELL) or (
        kind in (OrderType.STOP_LIMIT_BUY, OrderType.STOP_LIMIT_SELL) and order.stage == "limit"
    ):
        assert order.price is not None
        return Trigger(BELOW if buy else ABOVE, order.price)
    assert order.stop_price is not None
    if kind in (OrderType.TAKE_PROFIT_BUY, OrderType.TAKE_PROFIT_SELL):
        return Trigger(BELOW if buy else ABOVE, order.stop_price)
    # stop-loss, stop-limit at its stop stage, trailing stops: a buy stop sits above the market
    return Trigger(ABOVE if buy else BELOW, order.stop_price)


def trailing_stop(order_type: OrderType, anchor: Decimal, amount: Decimal | None, percent: Decimal | None) -> Decimal:
    """The stop a trailing order keeps at its distance from the best price seen."""
    sell = order_type is OrderType.TRAILING_STOP_SELL
    if amount is not None:
        stop = anchor - amount if sell else anchor + amount
    else:
        assert percent is not None
        factor = (100 - percent) / 100 if sell else (100 + percent) / 100
        stop = anchor * factor
    return stop.quantize(PRICE_PLACES, rounding=ROUND_DOWN if sell else ROUND_UP)


def index_attributes(order: Order) -> Item:
    trigger = trigger_of(order)
    attrs: Item = {"gsi2pk": keys.trigger_pk(order.asset_id, trigger.direction), "gsi2sk": trigger.price}
    if order.expires_at is not None:
        attrs.update(gsi1pk=keys.EXPIRY_INDEX_PK, gsi1sk=isoformat(order.expires_at))
    if order.order_type in TRAILING:
        assert order.trail_anchor is not None
        attrs.update(gsi3pk=keys.trail_pk(order.asset_id, order.side.value), gsi3sk=order.trail_anchor)
    return attrs


class RestingOrders:
    def __init__(
        self,
        store: ItemStore,
        orders: OrderDAO,
        balances: BalanceDAO,
        holdings: HoldingDAO,
        settings: Settings,
        clock: Clock,
        events: EventBus,
    ) -> None:
        self.store = store
        self.orders = orders
        self.balances = balances
        self.holdings = holdings
        self.settings = settings
        self.clock = clock
        self.events = events

    # --- placement ----------------------------------------------------------------------------

    def check_placement(self, request: OrderCreate, market_price: Decimal) -> None:
        """Rules that depend on the market: refused here, nothing is stored."""
        now = self.clock.now()
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

    def marketable(self, request: OrderCreate, market_price: Decimal) -> bool:
        """A limit or take-profit order whose price the market already satisfies fills at once."""
        if request.order_type not in LIMIT_LIKE:
            return False
        bound = (
            request.price if request.order_type in (OrderType.LIMIT_BUY, OrderType.LIMIT_SELL) else request.stop_price
        )
        assert bound is not None
        direction = BELOW if request.order_type.side is OrderSide.BUY else ABOVE
        return crossed(direction, bound, market_price)

    def reservation(self, request: OrderCreate, market_price: Decimal, asset: Asset) -> tuple[Decimal, Decimal | None]:
        """What a resting order holds (USD for buys, units for sells) and its trailing anchor."""
        anchor = market_price if request.order_type in TRAILING else None
        if request.order_type.side is OrderSide.SELL:
            return request.quantity, anchor
        margin = 1 + self.settings.stop_buy_reserve_margin
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
        value = request.quantity * per_unit
        if value > self.settings.order_value_limit:
            raise OrderValueExceedsLimit(
                f"Order value {describe_amount(value)} USD exceeds the limit of {self.settings.order_value_limit} USD"
            )
        return round_up(value, USD_SCALE), anchor

    def new_order(
        self, username: str, request: OrderCreate, status: OrderStatus, held: Decimal, anchor: Decimal | None
    ) -> Order:
        now = self.clock.now()
        stop_price = request.stop_price
        if request.order_type in TRAILING:
            assert anchor is not None
            stop_price = trailing_stop(request.order_type, anchor, request.trail_amount, request.trail_percent)
        return Order(
            order_id=new_id(),
            username=username,
            client_order_id=request.client_order_id,
            order_type=request.order_type,
            asset_id=request.asset_id,
            quantity=request.quantity,
            price=request.price,
            stop_price=stop_price,
            trail_amount=request.trail_amount,
            trail_percent=request.trail_percent,
            time_in_force=request.time_in_force,
            expires_at=request.expires_at,
            status=status,
            held_amount=held,
            stage="stop" if request.order_type in (OrderType.STOP_LIMIT_BUY, OrderType.STOP_LIMIT_SELL) else None,
            trail_anchor=anchor,
            created_at=now,
            updated_at=now,
        )

    async def record_unfilled(self, username: str, request: OrderCreate, apply_op: MarkApplied | None) -> Order:
        """An ioc/fok order the market does not satisfy: stored cancelled, nothing reserved."""
        order = self.new_order(username, request, OrderStatus.CANCELLED, Decimal(0), None).model_copy(
            update={"reason": f"{request.time_in_force.value}: the limit was not reachable at placement"}
        )
        order = order.model_copy(update={"cancelled_at": order.created_at})
        ops: list[Op] = [self.orders.create_order_op(order)]
        if apply_op is not None:
            ops.append(apply_op(order.order_id))
        try:
            await self.store.transact(ops)
        except ConditionFailed as exc:
            raise IdempotencyInProgress() from exc
        self.events.publish(username, "order.cancelled", order)
        return order

    async def queue(
        self, username: str, request: OrderCreate, asset: Asset, market_price: Decimal, apply_op: MarkApplied | None
    ) -> Order:
        """Store the order as queued and move its reservation from available to held, at once."""
        held, anchor = self.reservation(request, market_price, asset)
        order = self.new_order(username, request, OrderStatus.QUEUED, held, anchor)
        now = order.created_at
        order_op = self.orders.create_order_op(order, index_attributes(order))
        if order.side is OrderSide.BUY:
            entry = BalanceTransaction(
                transaction_id=new_id(),
                username=username,
                transaction_type=TransactionType.ORDER_HOLD,
                amount=held,
                available_change=-held,
                held_change=held,
                description=f"Reserved for {order.order_type.value} {order.quantity} {order.asset_id}",
                order_id=order.order_id,
                created_at=now,
            )
            ops: list[Op] = [order_op, *self.balances.entry_ops(entry)]  # 0 order, 1 entry, 2 balance
            guarded = 2
        else:
            ops = [
                order_op,
                self.holdings.change_op(username, order.asset_id, now, available=-held, held=held),  # 1
                self._asset_txn(order, "hold", available=-held, held=held, price=None, total=None),  # 2
            ]
            guarded = 1
        if apply_op is not None:
            ops.append(apply_op(order.order_id))
        try:
            await self.store.transact(ops)
        except ConditionFailed as exc:
            if exc.index == guarded:
                if order.side is OrderSide.BUY:
                    raise InsufficientFunds(f"Reserving {held} USD needs more available cash") from exc
                raise InsufficientHoldings(f"You have less than {held} {order.asset_id} available") from exc
            if exc.index == len(ops) - 1 and apply_op is not None:
                raise IdempotencyInProgress() from exc
            raise StoreError(f"unexpected condition failure at op {exc.index}") from exc
        self.events.publish(username, "order.queued", order)
        return order

    def _asset_txn(
        self,
        order: Order,
        kind: str,
        *,
        available: Decimal,
        held: Decimal,
        price: Decimal | None,
        total: Decimal | None,
    ) -> Op:
        return self.holdings.asset_transaction_op(
            username=order.username,
            asset_id=order.asset_id,
            transaction_id=new_id(),
            transaction_type=kind,
            quantity=order.quantity,
            available_change=available,
            held_change=held,
            price=price,
            total=total,
            order_id=order.order_id,
            now=self.clock.now(),
        )

    # --- release: cancel, expiry, failure -----------------------------------------------------

    def _close_op(self, order: Order, item: Item, status: OrderStatus, fields: Item) -> Op:
        """The order's own update: applies only if it is still queued at the trigger we saw."""
        now = isoformat(self.clock.now())
        guards = [Eq("status", OrderStatus.QUEUED.value)]
        if "gsi2sk" in item:
            guards.append(Eq("gsi2sk", item["gsi2sk"]))
        return Update(
            keys.ORDERS,
            keys.order_key(order.username, order.order_id),
            set={"status": status.value, "updated_at": now, **fields},
            remove=tuple(name for name in INDEX_ATTRIBUTES if name in item),
            condition=And(*guards),
        )

    async def release(self, item: Item, status: OrderStatus, reason: str) -> Order | None:
        """End a queued order without a fill and give back its reservation; None if it was no longer queued."""
        order = order_from_item(item)
        now = self.clock.now()
        fields: Item = {"reason": reason}
        if status is OrderStatus.CANCELLED:
            fields["cancelled_at"] = isoformat(now)
        ops: list[Op] = [self._close_op(order, item, status, fields)]
        held = order.held_amount
        if order.side is OrderSide.BUY:
            if held > 0:
                entry = BalanceTransaction(
                    transaction_id=new_id(),
                    username=order.username,
                    transaction_type=TransactionType.ORDER_RELEASE,
                    amount=held,
                    available_change=held,
                    held_change=-held,
                    description=f"Released reservation of {order.order_type.value} ({status.value})",
                    order_id=order.order_id,
                    created_at=now,
                )
                ops += self.balances.entry_ops(entry)
        else:
            ops += [
                self.holdings.change_op(order.username, order.asset_id, now, available=held, held=-held),
                self._asset_txn(order, "release", available=held, held=-held, price=None, total=None),
            ]
        try:
            await self.store.transact(ops)
        except ConditionFailed as exc:
            if exc.index == 0:
                return None
            raise StoreError(f"releasing order {order.order_id} failed at op {exc.index}") from exc
        closed = order.model_copy(update={"status": status, "reason": reason, "updated_at": now})
        if status is OrderStatus.CANCELLED:
            closed = closed.model_copy(update={"cancelled_at": now})
        self.events.publish(order.username, f"order.{status.value}", closed)
        return closed

    async def cancel(self, username: str, order_id: str) -> Order:
        item = await self.orders.get_order_item(username, order_id)
        if item is None:
            raise OrderNotFound()
        if OrderStatus(item["status"]) is not OrderStatus.QUEUED:
            raise OrderNotCancellable(f"The order is already {item['status']}")
        closed = await self.release(item, OrderStatus.CANCELLED, "cancelled by the user")
        if closed is None:
            current = await self.orders.get_order(username, order_id)
            raise OrderNotCancellable(f"The order is already {current.status.value}")
        return closed

    # --- trigger engine steps -----------------------------------------------------------------

    async def crossed_orders(self, asset_id: str, price: Decimal) -> list[Item]:
        """Resting orders of one asset whose trigger this price crosses: two range queries."""
        found: list[Item] = []
        for direction, condition in ((BELOW, SortKey.ge(price)), (ABOVE, SortKey.le(price))):
            pk = keys.trigger_pk(asset_id, direction)
            found += [item async for item in query_all(self.store, keys.ORDERS, pk, sk=condition, index="gsi2")]
        return found

    async def trailing_to_move(self, asset_id: str, price: Decimal) -> list[Item]:
        """Trailing stops whose best price this tick beats: sells below a new high, buys above a new low."""
        found: list[Item] = []
        for side, condition in (("sell", SortKey.lt(price)), ("buy", SortKey.gt(price))):
            pk = keys.trail_pk(asset_id, side)
            found += [item async for item in query_all(self.store, keys.ORDERS, pk, sk=condition, index="gsi3")]
        return found

    async def move_trail(self, item: Item, price: Decimal) -> bool:
        order = order_from_item(item)
        stop = trailing_stop(order.order_type, price, order.trail_amount, order.trail_percent)
        try:
            await self.store.transact(
                [
                    Update(
                        keys.ORDERS,
                        keys.order_key(order.username, order.order_id),
                        set={
                            "trail_anchor": price,
                            "stop_price": stop,
                            "gsi2sk": stop,
                            "gsi3sk": price,
                            "updated_at": isoformat(self.clock.now()),
                        },
                        condition=And(Eq("status", OrderStatus.QUEUED.value), Eq("gsi3sk", item["gsi3sk"])),
                    )
                ]
            )
        except ConditionFailed:
            return False
        return True

    async def convert_stop_limit(self, item: Item) -> Item | None:
        """A stop-limit whose stop was crossed becomes a resting limit order (same reservation)."""
        order = order_from_item(item)
        limit_order = order.model_copy(update={"stage": "limit"})
        trigger = trigger_of(limit_order)
        fields: Item = {
            "stage": "limit",
            "gsi2pk": keys.trigger_pk(order.asset_id, trigger.direction),
            "gsi2sk": trigger.price,
            "updated_at": isoformat(self.clock.now()),
        }
        try:
            await self.store.transact(
                [
                    Update(
                        keys.ORDERS,
                        keys.order_key(order.username, order.order_id),
                        set=fields,
                        condition=And(Eq("status", OrderStatus.QUEUED.value), Eq("stage", "stop")),
                    )
                ]
            )
        except ConditionFailed:
            return None
        return {**item, **fields}

    async def fill(self, item: Item, price: Decimal, house_op: HouseTrade) -> Order | None:
        """Execute a crossed order at the tick's price; None if another worker or a cancel got there first."""
        order = order_from_item(item)
        if order.side is OrderSide.BUY:
            return await self._fill_buy(order, item, price, house_op)
        return await self._fill_sell(order, item, price, house_op)

    async def _fill_buy(self, order: Order, item: Item, price: Decimal, house_op: HouseTrade) -> Order | None:
        now = self.clock.now()
        cost = round_up(order.quantity * price, USD_SCALE)
        held = order.held_amount
        from_held = min(cost, held)
        extra = cost - from_held
        refund = held - from_held
        entries = [
            BalanceTransaction(
                transaction_id=new_id(),
                username=order.username,
                transaction_type=TransactionType.ORDER_PAYMENT,
                amount=cost,
                available_change=-extra,
                held_change=-from_held,
                description=f"Bought {order.quantity} {order.asset_id} at {price} USD ({order.order_type.value})",
                order_id=order.order_id,
                created_at=now,
            )
        ]
        if refund > 0:
            entries.append(
                BalanceTransaction(
                    transaction_id=new_id(),
                    username=order.username,
                    transaction_type=TransactionType.ORDER_REFUND,
                    amount=refund,
                    available_change=refund,
                    held_change=-refund,
                    description="Refund of the unused reservation",
                    order_id=order.order_id,
                    created_at=now,
                )
            )
        fields: Item = {
            "executed_price": price,
            "total_amount": cost,
            "executed_at": isoformat(now),
        }
        ops: list[Op] = [
            self._close_op(order, item, OrderStatus.COMPLETED, fields),  # 0
            *self.balances.entry_ops(*entries),  # 1.., then the balance
            self.holdings.change_op(order.username, order.asset_id, now, available=order.quantity, cost_basis=cost),
            self._asset_txn(order, "buy", available=order.quantity, held=Decimal(0), price=price, total=cost),
            house_op(order.asset_id, -order.quantity, cost),
        ]
        balance_index = len(entries) + 1
        try:
            await self.store.transact(ops)
        except ConditionFailed as exc:
            if exc.index == 0:
                return None
            reason = (
                "the fill cost more than the reservation and the available cash"
                if exc.index == balance_index
                else "the house could not supply the units"
            )
            log.info("resting_fill_failed", order_id=order.order_id, reason=reason)
            await self.release(item, OrderStatus.FAILED, reason)
            return None
        done = order.model_copy(
            update={
                "status": OrderStatus.COMPLETED,
                "executed_at": now,
                "updated_at": now,
                "executed_price": price,
                "total_amount": cost,
            }
        )
        self.events.publish(order.username, "order.completed", done)
        return done

    async def _fill_sell(self, order: Order, item: Item, price: Decimal, house_op: HouseTrade) -> Order | None:
        proceeds = round_down(order.quantity * price, USD_SCALE)
        for attempt in range(MAX_FILL_ATTEMPTS):
            now = self.clock.now()
            holding = await self.holdings.get_holding_item(order.username, order.asset_id)
            if holding is None or holding["held"] < order.quantity:
                await self.release(item, OrderStatus.FAILED, "the reserved units are missing")
                return None
            basis_out = cost_basis_out(holding, order.quantity)
            entry = BalanceTransaction(
                transaction_id=new_id(),
                username=order.username,
                transaction_type=TransactionType.ORDER_PROCEEDS,
                amount=proceeds,
                available_change=proceeds,
                held_change=Decimal("0.00"),
                description=f"Sold {order.quantity} {order.asset_id} at {price} USD ({order.order_type.value})",
                order_id=order.order_id,
                created_at=now,
            )
            fields: Item = {
                "executed_price": price,
                "total_amount": proceeds,
                "executed_at": isoformat(now),
                "realized_pnl": proceeds - basis_out,
            }
            ops: list[Op] = [
                self._close_op(order, item, OrderStatus.COMPLETED, fields),  # 0
                *self.balances.entry_ops(entry),  # 1, 2
                self.holdings.change_op(  # 3
                    order.username,
                    order.asset_id,
                    now,
                    held=-order.quantity,
                    cost_basis=-basis_out,
                    expected_version=holding["version"] if attempt < EXACT_COST_BASIS_ATTEMPTS else None,
                ),
                self._asset_txn(order, "sell", available=Decimal(0), held=-order.quantity, price=price, total=proceeds),
                house_op(order.asset_id, order.quantity, -proceeds),
            ]
            try:
                await self.store.transact(ops)
            except ConditionFailed as exc:
                if exc.index == 0:
                    return None
                if exc.index == 3:
                    continue
                await self.release(item, OrderStatus.FAILED, f"the fill was refused at step {exc.index}")
                return None
            done = order.model_copy(
                update={
                    "status": OrderStatus.COMPLETED,
                    "executed_at": now,
                    "updated_at": now,
                    "executed_price": price,
                    "total_amount": proceeds,
                    "realized_pnl": proceeds - basis_out,
                }
            )
            self.events.publish(order.username, "order.completed", done)
            return done
        raise StoreError(f"order {order.order_id}: the holding kept changing")

    async def due_for_expiry(self, now: datetime) -> list[Item]:
        page = await self.store.query(
            keys.ORDERS, keys.EXPIRY_INDEX_PK, sk=SortKey.le(isoformat(now)), index="gsi1", limit=100
        )
        return page.items

    async def queued_orders_of(self, username: str) -> list[Order]:
        """Every queued order of a user (for the audit and the events stream)."""
        result: list[Order] = []
        cursor = None
        while True:
            page = await self.orders.get_orders_by_user(
                username, limit=100, cursor=cursor, matches=lambda i: i["status"] == OrderStatus.QUEUED.value
            )
            result += [order_from_item(i) for i in page.items]
            cursor = page.next_cursor
            if cursor is None:
                return result
