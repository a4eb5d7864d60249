"""Manual prices, the PriceFeed runner, and choosing a source from its spec."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from cnop.common.clock import FakeClock
from cnop.common.config import Settings
from cnop.market.catalogue import load_catalogue
from cnop.market.feed import PriceFeed
from cnop.market.prices import PriceBook, PriceSource, Tick
from cnop.market.sources import (
    HttpPriceSource,
    ManualPriceSource,
    ReplayPriceSource,
    SimulatedPriceSource,
    open_price_source,
)

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
KNOWN = {"BTC", "ETH"}


async def test_set_price_emits_a_one_tick_batch_at_the_clocks_now() -> None:
    source = ManualPriceSource(FakeClock(NOW), known_assets=KNOWN)

    tick = await source.set_price("BTC", Decimal("70000.01"))
    batch = await anext(source.ticks())

    assert tick == Tick("BTC", Decimal("70000.01"), NOW)
    assert batch == [tick]


async def test_set_prices_publishes_several_assets_as_one_batch() -> None:
    source = ManualPriceSource(FakeClock(NOW), known_assets=KNOWN)

    await source.set_prices({"BTC": Decimal(1), "ETH": Decimal(2)})

    assert await anext(source.ticks()) == [Tick("BTC", Decimal(1), NOW), Tick("ETH", Decimal(2), NOW)]


async def test_set_price_refuses_unknown_assets_and_bad_prices() -> None:
    source = ManualPriceSource(FakeClock(NOW), known_assets=KNOWN)

    with pytest.raises(ValueError, match="unknown asset"):
        await source.set_price("DOGE", Decimal(1))
    with pytest.raises(ValueError, match="positive"):
        await source.set_price("BTC", Decimal(0))
    with pytest.raises(ValueError, match="positive"):
        await source.set_price("BTC", Decimal("NaN"))
    with pytest.raises(ValueError, match="implausibly large"):
        await source.set_price("BTC", Decimal("1e308"))
    with pytest.raises(TypeError, match="Decimal"):
        await source.set_price("BTC", 1.5)  # type: ignore[arg-type]


async def test_closing_the_manual_source_ends_its_stream() -> None:
    source = ManualPriceSource(FakeClock(NOW))
    await source.set_price("BTC", Decimal(1))
    await source.close()

    batches = [batch async for batch in source.ticks()]

    assert batches == [[Tick("BTC", Decimal(1), NOW)]]
    with pytest.raises(RuntimeError, match="closed"):
        await source.set_price("BTC", Decimal(2))


async def test_the_feed_applies_manual_prices_to_the_book_and_its_subscribers() -> None:
    clock = FakeClock(NOW)
    book = PriceBook.seed(load_catalogue(), clock)
    subscriber = book.subscribe()
    source = ManualPriceSource(clock, known_assets={a.asset_id for a in load_catalogue()})
    feed = PriceFeed(source, book)
    task = asyncio.create_task(feed.run())

    await source.set_price("BTC", Decimal("71000.00"))
    async with asyncio.timeout(2):
        received = await subscriber.get()

    assert received == [Tick("BTC", Decimal("71000.00"), NOW)]
    assert book.fresh_price("BTC", max_age_seconds=30) == Decimal("71000.00")
    assert feed.running
    await source.close()
    async with asyncio.timeout(2):
        await task
    assert not feed.running
    assert feed.batches_applied == 1


class FlakySource:
    """Fails on its first opening, then yields one batch and ends."""

    name = "flaky"

    def __init__(self) -> None:
        self.openings = 0

    async def ticks(self) -> AsyncIterator[list[Tick]]:
        self.openings += 1
        if self.openings == 1:
            raise ConnectionError("upstream went away")
        yield [Tick("ETH", Decimal("3900.00"), NOW)]

    async def close(self) -> None:
        pass


async def test_the_feed_survives_a_failing_source_and_carries_on() -> None:
    book = PriceBook(FakeClock(NOW))
    source = FlakySource()
    feed = PriceFeed(source, book, retry_delay_seconds=0.01)

    async with asyncio.timeout(2):
        await feed.run()

    assert source.openings == 2
    assert feed.errors == 1
    assert book.current("ETH") == Tick("ETH", Decimal("3900.00"), NOW)


async def test_cancelling_the_feed_stops_it() -> None:
    clock = FakeClock(NOW)
    source = SimulatedPriceSource(load_catalogue(), clock=clock, tick_seconds=0.01)
    book = PriceBook(clock)
    task = asyncio.create_task(PriceFeed(source, book).run())

    while book.current("BTC") is None:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_source_class_satisfies_the_protocol() -> None:
    sources: list[PriceSource] = [ManualPriceSource(FakeClock(NOW)), FlakySource()]

    assert [s.name for s in sources] == ["manual", "flaky"]


async def test_open_price_source_picks_the_source_named_by_the_spec(tmp_path: Path) -> None:
    catalogue = load_catalogue()
    settings = Settings(price_tick_seconds=2.0, price_seed=5)
    clock = FakeClock(NOW)
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("timestamp,asset_id,price\n1717200000,BTC,1\n1717200000,ZZZ,1\n", encoding="utf-8")

    simulated = open_price_source("simulated", catalogue, settings, clock)
    manual = open_price_source("manual", catalogue, settings, clock)
    replay = open_price_source(f"replay:{csv_path}", catalogue, settings, clock)
    http = open_price_source("http:http://127.0.0.1:9/api/v3", catalogue, settings, clock)
    bare = open_price_source("https://api.example.test/api/v3/coins/markets", catalogue, settings, clock)

    assert isinstance(simulated, SimulatedPriceSource)
    expected = SimulatedPriceSource(catalogue, clock=clock, seed=5, tick_seconds=2.0)
    assert simulated.steps(1) == expected.steps(1)
    assert isinstance(manual, ManualPriceSource)
    assert isinstance(replay, ReplayPriceSource)
    assert [b.prices for b in replay.batches] == [(("BTC", Decimal(1)),)]  # ZZZ is not listed
    assert isinstance(http, HttpPriceSource)
    assert http.endpoint == "http://127.0.0.1:9/api/v3/coins/markets"
    assert isinstance(bare, HttpPriceSource)
    assert bare.endpoint == "https://api.example.test/api/v3/coins/markets"
    await http.close()
    await bare.close()


@pytest.mark.parametrize("spec", ["", "random", "replay:", "http:", "http:ftp://x", "simulated:fast"])
def test_open_price_source_refuses_an_unknown_spec(spec: str) -> None:
    with pytest.raises(ValueError):
        open_price_source(spec, load_catalogue(), Settings(), FakeClock(NOW))
