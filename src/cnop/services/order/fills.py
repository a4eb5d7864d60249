"""Filling a crossed resting order at the tick's price, through the one settlement path.

The order's own status change (queued → completed, through the state machine) is the first leg,
conditioned on the order being queued at the trigger the engine saw, so two engines, or a cancel
racing a fill, can never both act on one order. A fill refused by another leg fails the order
and releases its reservation.
"""

from __future__ import annotations

from decimal import Decimal

import structlog

from cnop.common.clock import Clock
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.database.transaction import GuardFailed, Leg, Legs
from cnop.common.entities.order import Order, OrderSide, OrderStatus, OrderUpdate
from cnop.common.events import EventBus
from cnop.services.order.release import Release
from cnop.services.order.rules import buy_cost, sell_proceeds, trigger_of
from cnop.services.order.settlement import Settlement, UnitsMissing

log = structlog.get_logger("cnop.orders.fills")


class Fills:
    def __init__(
        self, orders: OrderDAO, settlement: Settlement, release: Release, clock: Clock, events: EventBus
    ) -> None:
        self.orders = orders
        self.settlement = settlement
        self.release = release
        self.clock = clock
        self.events = events

    async def fill(self, order: Order, price: Decimal) -> Order | None:
        """Execute a crossed order at `price`; None if another worker or a cancel got there first."""
        if order.side is OrderSide.BUY:
            return await self._fill_buy(order, price)
        return await self._fill_sell(order, price)

    async def _filled(self, order: Order, price: Decimal, total: Decimal, pnl: Decimal | None, legs: Legs) -> Order:
        """The order as filled now at `price`; its status change (only from queued, at its
        trigger) joins `legs`."""
        now = self.clock.now()
        update = OrderUpdate(
            status=OrderStatus.COMPLETED,
            executed_price=price,
            total_amount=total,
            realized_pnl=pnl,
            executed_at=now,
            updated_at=now,
        )
        return await self.orders.update_order_status(order, update, trigger_seen=trigger_of(order).price, tx=legs)

    async def _fill_buy(self, order: Order, price: Decimal) -> Order | None:
        legs = Legs()
        done = await self._filled(order, price, buy_cost(order.quantity * price), None, legs)
        try:
            await self.settlement.settle_buy(done, legs, held=order.held_amount, note=f" ({order.order_type.value})")
        except GuardFailed as failed:
            if failed.leg is Leg.ORDER:
                return None
            reason = (
                "the fill cost more than the reservation and the available cash"
                if failed.leg is Leg.BALANCE
                else "the house could not supply the units"
            )
            log.info("resting_fill_failed", order_id=order.order_id, reason=reason)
            await self.release.release(order, OrderStatus.FAILED, reason)
            return None
        self.events.publish(order.username, "order.completed", done)
        return done

    async def _fill_sell(self, order: Order, price: Decimal) -> Order | None:
        proceeds = sell_proceeds(order.quantity * price)
        try:
            done = await self.settlement.settle_sell(
                order.username,
                order.asset_id,
                order.quantity,
                lambda basis_out, legs: self._filled(order, price, proceeds, proceeds - basis_out, legs),
                from_held=True,
                note=f" ({order.order_type.value})",
            )
        except UnitsMissing:
            await self.release.release(order, OrderStatus.FAILED, "the reserved units are missing")
            return None
        except GuardFailed as failed:
            if failed.leg is Leg.ORDER:
                return None
            await self.release.release(order, OrderStatus.FAILED, f"the fill was refused at step {failed.index}")
            return None
        self.events.publish(order.username, "order.completed", done)
        return done
