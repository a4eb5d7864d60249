"""The feed: the pump that applies a price source's batches to the price book."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

from cnop.market.bus import PriceBus
from cnop.market.prices import PriceBook, PriceSource

log = logging.getLogger(__name__)


class PriceFeed:
    """Applies a source's batches to a price book (and so to its subscribers) until cancelled.

    If the source raises, the error is logged and the source's `ticks()` is opened again after
    `retry_delay_seconds`; the sources keep their state, so they continue where they were. If
    the source ends (a finished replay, a closed source), `run()` returns.
    """

    def __init__(self, source: PriceSource, target: PriceBook | PriceBus, *, retry_delay_seconds: float = 1.0) -> None:
        self.source = source
        # A book is fed directly (one process); a bus publishes for every process's book.
        self.book = target if isinstance(target, PriceBook) else None
        self.bus = None if isinstance(target, PriceBook) else target
        self._retry_delay = retry_delay_seconds
        self.batches_applied = 0
        self.errors = 0
        self.running = False

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                try:
                    await self._consume()
                except Exception:
                    self.errors += 1
                    log.exception(
                        "price feed: source %s failed; restarting in %.1f s",
                        self.source.name,
                        self._retry_delay,
                    )
                    await asyncio.sleep(self._retry_delay)
                else:
                    log.info("price feed: source %s ended", self.source.name)
                    return
        finally:
            self.running = False

    async def _consume(self) -> None:
        batches = self.source.ticks()
        try:
            async for batch in batches:
                if self.bus is not None:
                    await self.bus.publish(batch)
                elif self.book is not None:
                    self.book.apply(batch)
                self.batches_applied += 1
        finally:
            if isinstance(batches, AsyncGenerator):
                await batches.aclose()
