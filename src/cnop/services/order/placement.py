"""Placing a resting order: stored queued with its reservation held, or (ioc/fok) stored unfilled.

Each is one store transaction. A queued order is indexed where its trigger waits
(`rules.trigger_of`), so the trigger engine finds it by a range query when the price crosses.
"""

from __future__ import annotations

from decimal import Decimal

from cnop.common.clock import Clock
from cnop.common.config import Settings
from cnop.common.dao.order_dao import OrderDAO, RestingIndex
from cnop.common.database.store import ItemStore
from cnop.common.database.transaction import GuardFailed, Leg, Legs
from cnop.common.entities.order import Order, OrderCreate, OrderSide, OrderStatus
from cnop.common.events import EventBus
from cnop.common.exceptions import IdempotencyInProgress, InsufficientFunds, InsufficientHoldings, StoreError
from cnop.common.ids import new_id
from cnop.services.order.rules import STOP_LIMIT, initial_stop, reservation, trigger_of
from cnop.services.order.settlement import Settlement, idempotency_leg


def resting_index(order: Order) -> RestingIndex:
    """Where an order waits in the trigger index (by `rules.trigger_of`)."""
    trigger = trigger_of(order)
    return RestingIndex(trigger.direction, trigger.price)


class Placement:
    def __init__(
        self,
        store: ItemStore,
        orders: OrderDAO,
        settlement: Settlement,
        settings: Settings,
        clock: Clock,
        events: EventBus,
    ) -> None:
        self.store = store
        self.orders = orders
        self.settlement = settlement
        self.settings = settings
        self.clock = clock
        self.events = events

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

    async def record_unfilled(self, username: str, request: OrderCreate) -> Order:
        """An ioc/fok order the market does not satisfy: stored cancelled, nothing reserved."""
        order = self.new_order(username, request, OrderStatus.CANCELLED, Decimal(0), None)
        order = order.model_copy(
            update={
                "reason": f"{request.time_in_force.value}: the limit was not reachable at placement",
                "cancelled_at": order.created_at,
            }
        )
        legs = Legs()
        await self.orders.create_order(order, tx=legs)
        try:
            await idempotency_leg(legs, order.order_id).commit(self.store)
        except GuardFailed as failed:
            if failed.leg is Leg.IDEMPOTENCY:
                raise IdempotencyInProgress() from failed
            raise StoreError(f"unexpected condition failure on the {failed.leg.value} leg") from failed
        self.events.publish(username, "order.cancelled", order)
        return order

    async def queue(self, username: str, request: OrderCreate, market_price: Decimal) -> Order:
        """Store the order as queued and move its reservation from available to held, at once."""
        reserved = reservation(
            request,
            market_price,
            stop_buy_margin=self.settings.stop_buy_reserve_margin,
            value_limit=self.settings.order_value_limit,
        )
        order = self.new_order(username, request, OrderStatus.QUEUED, reserved.held, reserved.anchor)
        legs = Legs()
        await self.orders.create_order(order, resting_index(order), tx=legs)
        await self.settlement.hold_legs(order, legs)
        try:
            await idempotency_leg(legs, order.order_id).commit(self.store)
        except GuardFailed as failed:
            held = order.held_amount
            if failed.leg is Leg.BALANCE:
                raise InsufficientFunds(f"Reserving {held} USD needs more available cash") from failed
            if failed.leg is Leg.HOLDING and order.side is OrderSide.SELL:
                raise InsufficientHoldings(f"You have less than {held} {order.asset_id} available") from failed
            if failed.leg is Leg.IDEMPOTENCY:
                raise IdempotencyInProgress() from failed
            raise StoreError(f"unexpected condition failure on the {failed.leg.value} leg") from failed
        self.events.publish(username, "order.queued", order)
        return order
