"""Prices set by hand (the admin endpoint, tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping
from decimal import Decimal

from cnop.common.clock import Clock
from cnop.market.prices import Tick
from cnop.market.sources.numbers import plain_number


class ManualPriceSource:
    """Prices set by hand: each `set_price` emits a one-tick batch at the clock's now."""

    name = "manual"

    def __init__(self, clock: Clock, *, known_assets: Collection[str] | None = None, queue_size: int = 1000) -> None:
        self._clock = clock
        self._known_assets = known_assets
        self._queue: asyncio.Queue[list[Tick] | None] = asyncio.Queue(maxsize=queue_size)
        self._closed = False

    async def set_price(self, asset_id: str, price: Decimal) -> Tick:
        """Publish `price` for `asset_id` now; raises ValueError for an unknown asset or a bad price."""
        (tick,) = await self.set_prices({asset_id: price})
        return tick

    async def set_prices(self, prices: Mapping[str, Decimal]) -> list[Tick]:
        """Publish several prices as one batch, all stamped with the same moment."""
        if self._closed:
            raise RuntimeError("manual price source is closed")
        now = self._clock.now()
        batch = [Tick(asset_id, self._checked(asset_id, price), now) for asset_id, price in prices.items()]
        if batch:
            self._offer(batch)
        return batch

    def _checked(self, asset_id: str, price: Decimal) -> Decimal:
        if self._known_assets is not None and asset_id not in self._known_assets:
            raise ValueError(f"unknown asset {asset_id!r}")
        if not isinstance(price, Decimal):
            raise TypeError(f"price must be a Decimal, not {type(price).__name__}")
        if not price.is_finite() or price <= 0:
            raise ValueError(f"price must be positive and finite, not {price}")
        return plain_number(price)

    def _offer(self, item: list[Tick] | None) -> None:
        if self._queue.full():  # nobody is consuming: forget the oldest rather than block the admin
            self._queue.get_nowait()
        self._queue.put_nowait(item)

    async def ticks(self) -> AsyncIterator[list[Tick]]:
        # Prices set before `close` are still delivered; the stream ends at the close marker.
        while not (self._closed and self._queue.empty()):
            batch = await self._queue.get()
            if batch is None:
                return
            yield batch

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._offer(None)
