"""Price history that survives a restart: the price book's ticks, downsampled, kept in a store.

Charts need an hour, a day and a month of prices; the price book holds them in memory only.
`PriceHistoryRecorder` follows the book and, every few seconds, writes each asset's latest tick
as its point for the current minute and the current hour. At start-up it reads them back into
the book (`PriceBook.restore`), so a restarted server still draws yesterday's chart.

Where the points live is a small port, `PriceHistoryStore`: `StorePriceHistory` keeps them in the
item store (the default, both engines); a shared-state implementation (Redis) can take its place
through the same two methods. The kept history is bounded by construction: points sit in ring
slots per (asset, resolution) -- 1440 minutes and 720 hours -- and a slot is overwritten when its
time comes round again, so nothing needs sweeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

import structlog

from cnop.common.clock import Clock, isoformat, parse_isoformat
from cnop.common.database import keys
from cnop.common.database.store import ItemStore, Put, query_all
from cnop.market.prices import PriceBook, Tick

log = structlog.get_logger("cnop.market.history")


@dataclass(frozen=True, slots=True)
class Resolution:
    seconds: int
    slots: int

    @property
    def span(self) -> timedelta:
        return timedelta(seconds=self.seconds * self.slots)


MINUTES = Resolution(60, 24 * 60)
HOURS = Resolution(3600, 30 * 24)
RESOLUTIONS = (MINUTES, HOURS)
TRANSACTION_SIZE = 25


class PriceHistoryStore(Protocol):
    """Where downsampled price points are kept between restarts."""

    async def save(self, resolution: Resolution, ticks: Sequence[Tick]) -> None:
        """Keep each tick as its asset's point for the bucket it falls in (the last write wins)."""
        ...

    async def load(self, since: datetime) -> list[Tick]:
        """Every kept point from `since` on, at any resolution, in no particular order."""
        ...


class StorePriceHistory:
    """Price points in the inventory table: one partition, a ring slot per point (see module)."""

    def __init__(self, store: ItemStore) -> None:
        self.store = store

    async def save(self, resolution: Resolution, ticks: Sequence[Tick]) -> None:
        puts = []
        for tick in ticks:
            bucket = int(tick.at.timestamp()) // resolution.seconds
            item = {
                **keys.price_point_key(tick.asset_id, resolution.seconds, bucket % resolution.slots),
                "asset_id": tick.asset_id,
                "price": tick.price,
                "at": isoformat(tick.at),
                "bucket": Decimal(bucket),
            }
            puts.append(Put(keys.INVENTORY, item))
        for start in range(0, len(puts), TRANSACTION_SIZE):
            await self.store.transact(puts[start : start + TRANSACTION_SIZE])

    async def load(self, since: datetime) -> list[Tick]:
        points: list[Tick] = []
        async for item in query_all(self.store, keys.INVENTORY, keys.PRICE_HISTORY_PK):
            at = parse_isoformat(item["at"])
            if at >= since:
                points.append(Tick(item["asset_id"], Decimal(item["price"]), at))
        return points


class PriceHistoryRecorder:
    """Follows the price book; writes the latest tick per asset every `flush_seconds`."""

    def __init__(self, book: PriceBook, history: PriceHistoryStore, clock: Clock, flush_seconds: float) -> None:
        self.book = book
        self.history = history
        self.clock = clock
        self.flush_seconds = flush_seconds
        self._pending: dict[str, Tick] = {}

    async def restore(self) -> int:
        """Read the kept points back into the book (at start-up, before the feed runs)."""
        since = self.clock.now() - HOURS.span
        try:
            points = await self.history.load(since)
        except Exception:
            log.exception("price_history_restore_failed")
            return 0
        by_asset: dict[str, list[Tick]] = {}
        for point in points:
            by_asset.setdefault(point.asset_id, []).append(point)
        restored = sum(self.book.restore(asset_id, ticks) for asset_id, ticks in by_asset.items())
        log.info("price_history_restored", points=restored, assets=len(by_asset))
        return restored

    def note(self, ticks: Sequence[Tick]) -> None:
        for tick in ticks:
            self._pending[tick.asset_id] = tick

    async def flush(self) -> int:
        """Write what arrived since the last flush; a failure keeps it for the next one."""
        if not self._pending:
            return 0
        batch, self._pending = list(self._pending.values()), {}
        try:
            for resolution in RESOLUTIONS:
                await self.history.save(resolution, batch)
        except Exception:
            log.exception("price_history_flush_failed")
            for tick in batch:
                self._pending.setdefault(tick.asset_id, tick)
            return 0
        return len(batch)

    async def run(self) -> None:
        queue = self.book.subscribe()
        try:
            while True:
                try:
                    batch = await asyncio.wait_for(queue.get(), timeout=self.flush_seconds)
                    self.note(batch)
                    while not queue.empty():
                        self.note(queue.get_nowait())
                except TimeoutError:
                    pass
                if self._due():
                    await self.flush()
        finally:
            self.book.unsubscribe(queue)
            with contextlib.suppress(Exception):
                await self.flush()

    _last_flush: float = 0.0

    def _due(self) -> bool:
        now = time.monotonic()  # the cadence is wall time, whatever clock the prices keep
        if now - self._last_flush >= self.flush_seconds:
            self._last_flush = now
            return True
        return False
