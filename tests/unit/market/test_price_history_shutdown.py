"""The price-history recorder stops when cancelled, even when a tick arrives at that moment."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

from cnop.common.clock import FakeClock
from cnop.market.history import PriceHistoryRecorder, PriceHistoryStore
from cnop.market.prices import PriceBook, Tick


class KeptPoints(PriceHistoryStore):
    """An in-memory history that records what was saved."""

    def __init__(self) -> None:
        self.saved: list[Tick] = []

    async def save(self, resolution, ticks):  # type: ignore[no-untyped-def]
        self.saved.extend(ticks)

    async def load(self, since):  # type: ignore[no-untyped-def]
        return []


async def test_recorder_ends_when_cancelled_as_a_tick_arrives() -> None:
    # On Python 3.11 `asyncio.wait_for` returns the queue's item instead of raising when the
    # cancellation and the item arrive in the same loop step; the recorder then looped forever and
    # an app's shutdown (which cancels and awaits its background tasks) never finished.
    clock = FakeClock(datetime(2026, 11, 1, tzinfo=UTC))
    book = PriceBook(clock)
    history = KeptPoints()
    recorder = PriceHistoryRecorder(book, history, clock, flush_seconds=3600)
    task = asyncio.create_task(recorder.run())
    for _ in range(20):
        await asyncio.sleep(0)
    assert book.subscriber_count == 1
    book.apply([Tick("BTC", Decimal("50000.01"), clock.now())])
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done and task.cancelled()
    assert book.subscriber_count == 0
    # What arrived before the stop is still written by the final flush.
    assert [(t.asset_id, t.price) for t in history.saved] == [("BTC", Decimal("50000.01"))] * len(history.saved)
