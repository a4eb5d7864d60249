"""One price publisher for the whole fleet: the holder of the price lease runs the source.

`LeasedPriceFeed(lease, source, bus, book)` runs in every process that may publish (workers, the
`price` role). Each one tries to acquire the lease every third of its TTL; the one that has it
runs the source and publishes each batch with the lease's value as the fence, and renews the
lease every third of the TTL. It stops publishing at once when:

- a renewal says the lease is someone else's (it stalled past the TTL and was taken over);
- it cannot renew before its own reckoning of the TTL runs out (Redis unreachable);
- the bus refuses a batch (the fenced script saw another value): the same, detected at publish.

Then it closes the source's stream and goes back to contending. On taking over, a source that can
(`resume`, the simulated walk) continues from the prices in the book, so the market does not jump
back to the catalogue's snapshot. A clean shutdown releases the lease, so another process takes
over at once instead of after the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence

from redis.exceptions import RedisError

from cnop.common.shared.lease import FencedLease
from cnop.market.bus import PriceBus
from cnop.market.prices import PriceBook, PriceSource, Tick

log = logging.getLogger(__name__)


class Deposed(Exception):
    """The price lease is no longer this process's: stop publishing."""


class LeasedPriceFeed:
    def __init__(
        self,
        lease: FencedLease,
        source: PriceSource,
        bus: PriceBus,
        book: PriceBook,
        *,
        retry_delay_seconds: float = 1.0,
    ) -> None:
        self.lease = lease
        self.source = source
        self.bus = bus
        self.book = book
        self._retry_delay = retry_delay_seconds
        self.terms = 0
        """How many times this process has held the lease."""
        self.batches_published = 0
        self.leading = False

    @property
    def interval(self) -> float:
        return self.lease.ttl_seconds / 3

    async def run(self) -> None:
        try:
            while True:
                try:
                    token = await self.lease.acquire()
                except (RedisError, OSError) as exc:
                    log.warning("price lease: cannot reach Redis (%s)", exc)
                    token = None
                if token is None:
                    await asyncio.sleep(self.interval)
                    continue
                self.terms += 1
                log.info("price lease: acquired (token %d); publishing from source %s", token, self.source.name)
                reason = await self._lead()
                log.warning("price lease: stopped publishing (token %d): %s", token, reason)
                self.lease.lost()
                await asyncio.sleep(self.interval)
        finally:
            self.leading = False
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self.lease.release())

    async def _lead(self) -> str:
        """Publish while the lease holds; the reason it stopped."""
        self.leading = True
        resume = getattr(self.source, "resume", None)
        if callable(resume):
            resume({asset_id: tick.price for asset_id, tick in self.book.snapshot().items()})
        publishing = asyncio.create_task(self._publish_all())
        try:
            while True:
                done, _ = await asyncio.wait({publishing}, timeout=self.interval)
                if done:
                    return self._ended(publishing)
                try:
                    if not await self.lease.renew():
                        return "the lease was taken over"
                except (RedisError, OSError) as exc:
                    if not self.lease.held:
                        return f"could not renew the lease within its TTL ({exc})"
        finally:
            self.leading = False
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await publishing

    @staticmethod
    def _ended(task: asyncio.Task[None]) -> str:
        exc = task.exception()
        if isinstance(exc, Deposed):
            return "a publish was refused (another process holds the lease)"
        if exc is not None:
            return f"the source failed: {type(exc).__name__}: {exc}"
        return "the source ended"

    async def _publish_all(self) -> None:
        while True:
            try:
                await self._consume()
            except (Deposed, asyncio.CancelledError):
                raise
            except (RedisError, OSError) as exc:
                if not self.lease.held:
                    raise Deposed(f"lease expired while Redis failed ({exc})") from exc
                log.warning("price lease: publish failed (%s); retrying", exc)
                await asyncio.sleep(self._retry_delay)
            except Exception:
                log.exception("price lease: source %s failed; restarting it", self.source.name)
                await asyncio.sleep(self._retry_delay)
            else:
                return

    async def _consume(self) -> None:
        batches = self.source.ticks()
        try:
            async for batch in batches:
                await self._publish(batch)
        finally:
            if isinstance(batches, AsyncGenerator):
                await batches.aclose()

    async def _publish(self, batch: Sequence[Tick]) -> None:
        fence = self.lease.fence
        if fence is None or not self.lease.held:
            raise Deposed("the lease is not held")
        if not await self.bus.publish(batch, fence=fence):
            raise Deposed("the bus refused the fence")
        self.batches_published += 1
