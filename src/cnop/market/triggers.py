"""The trigger engine: turns price ticks into fills of resting orders.

Per tick it reads only the orders the price crossed (range queries on the trigger index) and the
trailing stops whose best price it beats, so its cost grows with the orders that fire, not with
the orders that rest. Every action is one conditional transaction (see `RestingOrders`), so any
number of engines may run over one store: each order is filled at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from decimal import Decimal

import structlog

from cnop.common.clock import Clock
from cnop.common.config import Settings
from cnop.common.dao.order_dao import order_from_item
from cnop.common.entities.order import OrderStatus
from cnop.market.prices import PriceBook, Tick
from cnop.services.order.resting import RestingOrders
from cnop.services.order.rules import crossed, trigger_of

log = structlog.get_logger("cnop.triggers")


class TriggerEngine:
    def __init__(self, book: PriceBook, resting: RestingOrders, settings: Settings, clock: Clock) -> None:
        self.book = book
        self.resting = resting
        self.settings = settings
        self.clock = clock
        self.fills = 0
        # The time of the oldest tick taken from the book but not yet finished (None: caught up).
        self._working_since: datetime | None = None

    def lag_seconds(self) -> float:
        """How far behind the ticks the engine is: the age of the oldest unfinished tick, else 0."""
        since = self._working_since
        return 0.0 if since is None else max(0.0, (self.clock.now() - since).total_seconds())

    async def run(self) -> None:
        """Consume the book's ticks and expire due orders until cancelled."""
        queue = self.book.subscribe()
        expiry = asyncio.create_task(self._expiry_loop())
        try:
            while True:
                batch = await queue.get()
                self._working_since = min((tick.at for tick in batch), default=None)
                try:
                    await self.process(batch)
                finally:
                    self._working_since = None
        finally:
            self.book.unsubscribe(queue)
            expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expiry

    async def process(self, ticks: list[Tick]) -> int:
        """Apply one batch of ticks; returns how many orders filled."""
        filled = 0
        for tick in ticks:
            try:
                filled += await self.process_tick(tick.asset_id, tick.price)
            except Exception:  # one bad order or outage must not stop the engine
                log.exception("trigger_tick_failed", asset_id=tick.asset_id)
        return filled

    async def process_tick(self, asset_id: str, price: Decimal) -> int:
        for item in await self.resting.trailing_to_move(asset_id, price):
            await self.resting.move_trail(item, price)
        filled = 0
        for item in await self.resting.crossed_orders(asset_id, price):
            if item.get("stage") == "stop":
                converted = await self.resting.convert_stop_limit(item)
                if converted is None:
                    continue
                limit = trigger_of(order_from_item(converted))
                if not crossed(limit.direction, limit.price, price):
                    continue
                item = converted
            if await self.resting.fill(item, price) is not None:
                filled += 1
        self.fills += filled
        return filled

    async def expire_due(self) -> int:
        expired = 0
        for item in await self.resting.due_for_expiry(self.clock.now()):
            if await self.resting.release(item, OrderStatus.EXPIRED, "expired (time in force gtd)") is not None:
                expired += 1
        return expired

    async def _expiry_loop(self) -> None:
        while True:
            try:
                await self.expire_due()
            except Exception:
                log.exception("expiry_check_failed")
            await asyncio.sleep(self.settings.expiry_check_seconds)
