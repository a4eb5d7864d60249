"""Prices set by hand: the admin endpoint's price source (`CNOP_PRICE_SOURCE=manual`).

The admin endpoint hands a price to this source, and the price feed applies it to the book like
any other source's ticks; `set_prices_applied` waits until it has, so the admin's answer comes
after the price is visible.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal

from cnop.common.clock import Clock
from cnop.market.prices import Tick
from cnop.market.sources.numbers import plain_number


@dataclass(frozen=True, slots=True)
class _Queued:
    batch: list[Tick]
    applied: asyncio.Future[None] | None

    def fail(self, why: str) -> None:
        if self.applied is not None and not self.applied.done():
            self.applied.set_exception(RuntimeError(why))


class ManualPriceSource:
    """Prices set by hand: each `set_price` emits a one-tick batch at the clock's now."""

    name = "manual"

    def __init__(self, clock: Clock, *, known_assets: Collection[str] | None = None, queue_size: int = 1000) -> None:
        self._clock = clock
        self._known_assets = known_assets
        self._queue: asyncio.Queue[_Queued | None] = asyncio.Queue(maxsize=queue_size)
        self._closed = False

    async def set_price(self, asset_id: str, price: Decimal) -> Tick:
        """Publish `price` for `asset_id` now; raises ValueError for an unknown asset or a bad price."""
        (tick,) = await self.set_prices({asset_id: price})
        return tick

    async def set_prices(self, prices: Mapping[str, Decimal]) -> list[Tick]:
        """Publish several prices as one batch, all stamped with the same moment."""
        return self._publish(prices, None)

    async def set_prices_applied(self, prices: Mapping[str, Decimal], *, timeout_seconds: float = 5.0) -> list[Tick]:
        """Publish a batch and wait until its consumer (the price feed) has applied it.

        Raises TimeoutError when no consumer took it within `timeout_seconds`, and RuntimeError
        when the consumer stopped (or the batch was dropped) before applying it.
        """
        applied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch = self._publish(prices, applied)
        if batch:
            async with asyncio.timeout(timeout_seconds):
                await applied
        return batch

    def _publish(self, prices: Mapping[str, Decimal], applied: asyncio.Future[None] | None) -> list[Tick]:
        if self._closed:
            raise RuntimeError("manual price source is closed")
        now = self._clock.now()
        batch = [Tick(asset_id, self._checked(asset_id, price), now) for asset_id, price in prices.items()]
        if batch:
            self._offer(_Queued(batch, applied))
        return batch

    def _checked(self, asset_id: str, price: Decimal) -> Decimal:
        if self._known_assets is not None and asset_id not in self._known_assets:
            raise ValueError(f"unknown asset {asset_id!r}")
        if not isinstance(price, Decimal):
            raise TypeError(f"price must be a Decimal, not {type(price).__name__}")
        if not price.is_finite() or price <= 0:
            raise ValueError(f"price must be positive and finite, not {price}")
        return plain_number(price)

    def _offer(self, item: _Queued | None) -> None:
        if self._queue.full():  # nobody is consuming: forget the oldest rather than block the admin
            dropped = self._queue.get_nowait()
            if dropped is not None:
                dropped.fail("dropped: nobody consumed the manual prices")
        self._queue.put_nowait(item)

    async def ticks(self) -> AsyncIterator[list[Tick]]:
        # Prices set before `close` are still delivered; the stream ends at the close marker.
        while not (self._closed and self._queue.empty()):
            item = await self._queue.get()
            if item is None:
                return
            try:
                yield item.batch
            except BaseException:
                item.fail("the price feed stopped before applying the prices")
                raise
            # The consumer asks for the next batch only after it has applied this one.
            if item.applied is not None and not item.applied.done():
                item.applied.set_result(None)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._offer(None)
