"""Ending a queued order without a fill (cancel, expiry, a fill that failed): its reservation
goes back in the same transaction as the order's status change."""

from __future__ import annotations

from cnop.common.clock import Clock
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.database.store import ItemStore
from cnop.common.database.transaction import GuardFailed, Leg, Legs
from cnop.common.entities.order import Order, OrderStatus, OrderUpdate
from cnop.common.events import EventBus
from cnop.common.exceptions import OrderNotCancellable, StoreError
from cnop.services.order.rules import trigger_of
from cnop.services.order.settlement import Settlement


class Release:
    def __init__(
        self, store: ItemStore, orders: OrderDAO, settlement: Settlement, clock: Clock, events: EventBus
    ) -> None:
        self.store = store
        self.orders = orders
        self.settlement = settlement
        self.clock = clock
        self.events = events

    async def release(self, order: Order, status: OrderStatus, reason: str) -> Order | None:
        """End a queued order without a fill and give back its reservation; None if it was no
        longer queued at the trigger it was read with (another worker or a cancel got there first)."""
        now = self.clock.now()
        update = OrderUpdate(
            status=status,
            reason=reason,
            cancelled_at=now if status is OrderStatus.CANCELLED else None,
            updated_at=now,
        )
        legs = Legs()
        closed = await self.orders.update_order_status(order, update, trigger_seen=trigger_of(order).price, tx=legs)
        try:
            await (await self.settlement.release_legs(order, legs, status, now)).commit(self.store)
        except GuardFailed as failed:
            if failed.leg is Leg.ORDER:
                return None
            raise StoreError(f"releasing order {order.order_id} failed on the {failed.leg.value} leg") from failed
        self.events.publish(order.username, f"order.{status.value}", closed)
        return closed

    async def cancel(self, username: str, order_id: str) -> Order:
        """Cancel a queued order, releasing its reservation in the same transaction."""
        order = await self.orders.get_order(username, order_id)
        if order.status is not OrderStatus.QUEUED:
            raise OrderNotCancellable(f"The order is already {order.status.value}")
        closed = await self.release(order, OrderStatus.CANCELLED, "cancelled by the user")
        if closed is None:
            current = await self.orders.get_order(username, order_id)
            raise OrderNotCancellable(f"The order is already {current.status.value}")
        return closed
