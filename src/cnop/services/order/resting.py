"""Resting orders: placement with a reservation, fills when the price crosses, cancel and expiry.

Every step is one store transaction whose first op is the order's own update, conditioned on
`status = queued` (and on the trigger the caller saw), so two trigger workers, or a cancel racing
a fill, can never both act on one order: exactly one transaction wins, the others change nothing.

Directions: an order indexed `below` fires when the price falls to or under its trigger; `above`
fires when the price rises to or over it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import structlog

from cnop.common.clock import Clock, isoformat
from cnop.common.config import Settings
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.order_dao import OrderDAO, order_from_item
from cnop.common.database import keys
from cnop.common.database.store import And, Eq, Item, ItemStore, Op, SortKey, Update, query_all
from cnop.common.entities.asset import Asset
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.order import Order, OrderCreate, OrderSide, OrderStatus
from cnop.common.events import EventBus
from cnop.common.exceptions import (
    ConditionFailed,
    IdempotencyInProgress,
    InsufficientFunds,
    InsufficientHoldings,
    OrderNotCancellable,
    OrderNotFound,
    StoreError,
)
from cnop.common.idempotency import MarkApplied
from cnop.common.ids import new_id
from cnop.services.order.rules import (
    ABOVE,
    BELOW,
    STOP_LIMIT,
    TRAILING,
    Reservation,
    buy_cost,
    check_placement,
    initial_stop,
    marketable,
    reservation,
    sell_proceeds,
    trailing_stop,
    trigger_of,
)
from cnop.services.order.settlement import GuardFailed, Leg, Settlement, UnitsMissing

log = structlog.get_logger("cnop.orders.resting")

INDEX_ATTRIBUTES = ("gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk", "gsi3pk", "gsi3sk")


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
        settlement: Settlement,
    ) -> None:
        self.store = store
        self.orders = orders
        self.balances = balances
        self.holdings = holdings
        self.settings = settings
        self.clock = clock
        self.events = events
        self.settlement = settlement

    # --- placement ----------------------------------------------------------------------------

    def check_placement(self, request: OrderCreate, market_price: Decimal) -> None:
        """Rules that depend on the market: refused here, nothing is stored."""
        check_placement(request, market_price, self.clock.now())

    def marketable(self, request: OrderCreate, market_price: Decimal) -> bool:
        return marketable(request, market_price)

    def reservation(self, request: OrderCreate, market_price: Decimal) -> Reservation:
        """What a resting order holds (USD for buys, units for sells) and its trailing anchor."""
        return reservation(
            request,
            market_price,
            stop_buy_margin=self.settings.stop_buy_reserve_margin,
            value_limit=self.settings.order_value_limit,
        )

    def new_order(
        self, username: str, request: OrderCreate, status: OrderStatus, held: Decimal, anchor: Decimal | None
    ) -> Order:
        now = self.clock.now()
        return Order(
            order_id=new_id(),
            username=username,
            client_order_id=request.client_order_id,
            order_type=request.order_type,
            asset_id=request.asset_id,
            quantity=request.quantity,
            price=request.price,
            stop_price=initial_stop(request, anchor),
            trail_amount=request.trail_amount,
            trail_percent=request.trail_percent,
            time_in_force=request.time_in_force,
            expires_at=request.expires_at,
            status=status,
            held_amount=held,
            stage="stop" if request.order_type in STOP_LIMIT else None,
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
        reserved = self.reservation(request, market_price)
        held = reserved.held
        order = self.new_order(username, request, OrderStatus.QUEUED, held, reserved.anchor)
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

    async def fill(self, item: Item, price: Decimal) -> Order | None:
        """Execute a crossed order at the tick's price; None if another worker or a cancel got there first."""
        order = order_from_item(item)
        if order.side is OrderSide.BUY:
            return await self._fill_buy(order, item, price)
        return await self._fill_sell(order, item, price)

    def _filled(
        self, order: Order, item: Item, price: Decimal, total: Decimal, pnl: Decimal | None
    ) -> tuple[Order, Op]:
        """The order as filled now at `price`, and its own update (only from queued)."""
        now = self.clock.now()
        fields: Item = {"executed_price": price, "total_amount": total, "executed_at": isoformat(now)}
        if pnl is not None:
            fields["realized_pnl"] = pnl
        done = order.model_copy(
            update={
                "status": OrderStatus.COMPLETED,
                "executed_at": now,
                "updated_at": now,
                "executed_price": price,
                "total_amount": total,
                **({"realized_pnl": pnl} if pnl is not None else {}),
            }
        )
        return done, self._close_op(order, item, OrderStatus.COMPLETED, fields)

    async def _fill_buy(self, order: Order, item: Item, price: Decimal) -> Order | None:
        done, close = self._filled(order, item, price, buy_cost(order.quantity * price), None)
        try:
            await self.settlement.settle_buy(done, close, held=order.held_amount, note=f" ({order.order_type.value})")
        except GuardFailed as failed:
            if failed.leg is Leg.ORDER:
                return None
            reason = (
                "the fill cost more than the reservation and the available cash"
                if failed.leg is Leg.BALANCE
                else "the house could not supply the units"
            )
            log.info("resting_fill_failed", order_id=order.order_id, reason=reason)
            await self.release(item, OrderStatus.FAILED, reason)
            return None
        self.events.publish(order.username, "order.completed", done)
        return done

    async def _fill_sell(self, order: Order, item: Item, price: Decimal) -> Order | None:
        proceeds = sell_proceeds(order.quantity * price)
        try:
            done = await self.settlement.settle_sell(
                order.username,
                order.asset_id,
                order.quantity,
                lambda basis_out: self._filled(order, item, price, proceeds, proceeds - basis_out),
                from_held=True,
                note=f" ({order.order_type.value})",
            )
        except UnitsMissing:
            await self.release(item, OrderStatus.FAILED, "the reserved units are missing")
            return None
        except GuardFailed as failed:
            if failed.leg is Leg.ORDER:
                return None
            await self.release(item, OrderStatus.FAILED, f"the fill was refused at step {failed.index}")
            return None
        self.events.publish(order.username, "order.completed", done)
        return done

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
