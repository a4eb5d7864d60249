"""The trigger engine: turns price ticks into fills of resting orders.

Per tick it reads only the orders the price crossed (range queries on the trigger index) and the
trailing stops whose best price it beats, so its cost grows with the orders that fire, not with
the orders that rest. Every action is one conditional transaction (`fills.py`, `release.py`,
and the order's own moves in `OrderDAO`), so any number of engines may run over one store: each
order is filled at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from decimal import Decimal

import structlog

from cnop.common.clock import Clock
from cnop.common.config import Settings
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.database.store import ItemStore, SortKey
from cnop.common.entities.order import Order, OrderSide, OrderStatus
from cnop.common.events import EventBus
from cnop.common.shared.lease import FencedLease
from cnop.common.shared.shards import AllAssets, AssetShards, shard_of
from cnop.market.prices import PriceBook, Tick
from cnop.services.order.fills import Fills
from cnop.services.order.placement import resting_index
from cnop.services.order.release import Release
from cnop.services.order.rules import ABOVE, BELOW, crossed, trailing_stop, trigger_of
from cnop.services.order.settlement import House, Settlement

log = structlog.get_logger("cnop.triggers")


class TriggerEngine:
    def __init__(
        self, book: PriceBook, orders: OrderDAO, fills: Fills, release: Release, settings: Settings, clock: Clock
    ) -> None:
        self.book = book
        self.orders = orders
        self.filling = fills
        self.release = release
        self.settings = settings
        self.clock = clock
        self.fills = 0
        # With Redis: expiry runs only in the engine holding this lease, so once per fleet, not N times.
        self.expiry_lease: FencedLease | None = None
        # With Redis: the assets this engine handles now (the fleet's engines split them).
        self.shards: AllAssets | AssetShards = AllAssets()
        self._catching_up: set[asyncio.Task[int]] = set()
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
            if not self.shards.owns(tick.asset_id):
                continue  # another engine of the fleet handles this asset now
            try:
                filled += await self.process_tick(tick.asset_id, tick.price)
            except Exception:  # one bad order or outage must not stop the engine
                log.exception("trigger_tick_failed", asset_id=tick.asset_id)
        return filled

    def catch_up(self, shards: set[int]) -> None:
        """Shards just taken over: act on their assets' current prices (what a dead engine left)."""
        size = getattr(self.shards, "shards", 1)
        ticks = [t for t in self.book.snapshot().values() if shard_of(t.asset_id, size) in shards]
        task = asyncio.get_running_loop().create_task(self.process(ticks))
        self._catching_up.add(task)
        task.add_done_callback(self._catching_up.discard)

    async def process_tick(self, asset_id: str, price: Decimal) -> int:
        for order in await self.trailing_to_move(asset_id, price):
            stop = trailing_stop(order.order_type, price, order.trail_amount, order.trail_percent)
            await self.orders.move_trail(order, price, stop, trigger_of(order).direction)
        filled = 0
        for order in await self.crossed_orders(asset_id, price):
            if order.stage == "stop":
                converted = await self.orders.convert_stop_limit(
                    order, resting_index(order.model_copy(update={"stage": "limit"}))
                )
                if converted is None:
                    continue
                limit = trigger_of(converted)
                if not crossed(limit.direction, limit.price, price):
                    continue
                order = converted
            if await self.filling.fill(order, price) is not None:
                filled += 1
        self.fills += filled
        return filled

    async def crossed_orders(self, asset_id: str, price: Decimal) -> list[Order]:
        """Queued orders of one asset whose trigger this price crosses: two range queries."""
        below = await self.orders.get_orders_by_trigger(asset_id, BELOW, SortKey.ge(price))
        return below + await self.orders.get_orders_by_trigger(asset_id, ABOVE, SortKey.le(price))

    async def trailing_to_move(self, asset_id: str, price: Decimal) -> list[Order]:
        """Trailing stops whose best price this tick beats: sells below a new high, buys above a new low."""
        sells = await self.orders.get_trailing_orders(asset_id, OrderSide.SELL, SortKey.lt(price))
        return sells + await self.orders.get_trailing_orders(asset_id, OrderSide.BUY, SortKey.gt(price))

    async def expire_due(self) -> int:
        expired = 0
        for order in await self.orders.get_orders_due(self.clock.now()):
            if await self.release.release(order, OrderStatus.EXPIRED, "expired (time in force gtd)") is not None:
                expired += 1
        return expired

    async def _expiry_loop(self) -> None:
        while True:
            try:
                if await self._expires_here():
                    await self.expire_due()
            except Exception:
                log.exception("expiry_check_failed")
            await asyncio.sleep(self.settings.expiry_check_seconds)

    async def _expires_here(self) -> bool:
        """Whether this engine runs the expiry sweep now: always alone, else while it holds the lease.

        `acquire` takes the lease when it is free and extends it while it is ours; when the holder
        dies another engine takes over within the lease's TTL. An overlap during a takeover expires
        nothing twice: every release is conditional on the order still being queued.
        """
        if self.expiry_lease is None:
            return True
        return await self.expiry_lease.acquire() is not None


def trigger_engine(
    store: ItemStore, book: PriceBook, house: House, settings: Settings, clock: Clock, events: EventBus
) -> TriggerEngine:
    """A trigger engine over `store` with its own DAOs (another worker, a benchmark)."""
    orders, balances, holdings = OrderDAO(store, clock), BalanceDAO(store, clock), HoldingDAO(store, clock)
    settlement = Settlement(store, balances, holdings, house)
    release = Release(store, orders, settlement, clock, events)
    return TriggerEngine(book, orders, Fills(orders, settlement, release, clock, events), release, settings, clock)
