"""The admin's path for a manual price: into the manual source, applied by the feed, awaited."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from cnop.common.clock import FakeClock
from cnop.market.catalogue import load_catalogue
from cnop.market.feed import PriceFeed
from cnop.market.prices import PriceBook, Tick
from cnop.market.sources import ManualPriceSource

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


async def test_set_prices_applied_returns_after_the_feed_applied_the_batch_to_the_book() -> None:
    clock = FakeClock(NOW)
    book = PriceBook.seed(load_catalogue(), clock)
    source = ManualPriceSource(clock, known_assets={"BTC", "ETH"})
    feed = PriceFeed(source, book)
    running = asyncio.create_task(feed.run())
    try:
        batch = await source.set_prices_applied({"BTC": Decimal("61234.5"), "ETH": Decimal("3001")})
        # No sleep, no poll: when the call returns, the book already shows both prices.
        assert batch == [Tick("BTC", Decimal("61234.5"), NOW), Tick("ETH", Decimal("3001"), NOW)]
        assert book.current("BTC") == Tick("BTC", Decimal("61234.5"), NOW)
        assert book.current("ETH") == Tick("ETH", Decimal("3001"), NOW)
        assert feed.batches_applied == 1
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_set_prices_applied_times_out_when_no_feed_consumes_the_source() -> None:
    source = ManualPriceSource(FakeClock(NOW), known_assets={"BTC"})
    with pytest.raises(TimeoutError):
        await source.set_prices_applied({"BTC": Decimal("1")}, timeout_seconds=0.05)


async def test_a_batch_dropped_from_a_full_queue_fails_its_waiter_at_once() -> None:
    source = ManualPriceSource(FakeClock(NOW), known_assets={"BTC"}, queue_size=1)
    first = asyncio.create_task(source.set_prices_applied({"BTC": Decimal("1")}, timeout_seconds=5))
    await asyncio.sleep(0)  # the first batch is queued and waits
    await source.set_price("BTC", Decimal("2"))  # the queue is full: the first batch is dropped
    with pytest.raises(RuntimeError, match="dropped"):
        await first
    assert await anext(source.ticks()) == [Tick("BTC", Decimal("2"), NOW)]


async def test_a_feed_stopping_before_it_applied_the_batch_fails_its_waiter() -> None:
    source = ManualPriceSource(FakeClock(NOW), known_assets={"BTC"})
    waiter = asyncio.create_task(source.set_prices_applied({"BTC": Decimal("1")}, timeout_seconds=5))
    await asyncio.sleep(0)
    ticks = source.ticks()
    assert await anext(ticks) == [Tick("BTC", Decimal("1"), NOW)]
    await ticks.aclose()  # the consumer stops with the batch in hand, never asking for the next
    with pytest.raises(RuntimeError, match="stopped"):
        await waiter


async def test_an_unknown_asset_or_a_bad_price_is_refused_before_anything_is_queued() -> None:
    source = ManualPriceSource(FakeClock(NOW), known_assets={"BTC"})
    with pytest.raises(ValueError, match="unknown asset"):
        await source.set_prices_applied({"NOPE": Decimal("1")}, timeout_seconds=0.05)
    with pytest.raises(ValueError, match="positive"):
        await source.set_prices_applied({"BTC": Decimal("-1")}, timeout_seconds=0.05)
    await source.close()
    assert [batch async for batch in source.ticks()] == []
