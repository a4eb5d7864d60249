"""The simulated market: reproducible from its seed, bounded, and always exact Decimals."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from cnop.common.clock import FakeClock
from cnop.common.money import places
from cnop.market.catalogue import CatalogueAsset, load_catalogue
from cnop.market.prices import Tick
from cnop.market.sources.simulated import SimulatedPriceSource, simulated_batches

START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def source(
    seed: int, tick_seconds: float = 1.0, catalogue: list[CatalogueAsset] | None = None
) -> SimulatedPriceSource:
    return SimulatedPriceSource(
        catalogue or load_catalogue(), clock=FakeClock(START), seed=seed, tick_seconds=tick_seconds
    )


def one_asset_per_category() -> list[CatalogueAsset]:
    chosen: dict[str, CatalogueAsset] = {}
    for asset in load_catalogue():
        chosen.setdefault(asset.category, asset)
    return list(chosen.values())


def test_the_same_seed_gives_the_same_first_100_batches() -> None:
    first = source(seed=7).steps(100)
    second = source(seed=7).steps(100)

    assert first == second
    assert len(first) == 100
    assert all(len(batch) == len(load_catalogue()) for batch in first)


def test_a_different_seed_gives_a_different_market() -> None:
    assert source(seed=7).steps(100) != source(seed=8).steps(100)


def test_the_pure_generator_matches_the_source() -> None:
    from_source = source(seed=3).steps(20, start=START)
    from_generator = list(
        itertools.islice(simulated_batches(load_catalogue(), seed=3, tick_seconds=1.0, start=START), 20)
    )

    assert from_source == from_generator


def test_an_assets_path_does_not_depend_on_the_other_assets_listed() -> None:
    btc_only = [a for a in load_catalogue() if a.asset_id == "BTC"]

    alone = [batch[0] for batch in source(seed=5, catalogue=btc_only).steps(50)]
    among_all = [next(t for t in batch if t.asset_id == "BTC") for batch in source(seed=5).steps(50)]

    assert alone == among_all


def test_batches_are_stamped_one_tick_apart_from_the_start() -> None:
    batches = source(seed=1, tick_seconds=2.5).steps(3, start=START)

    assert [batch[0].at for batch in batches] == [START + timedelta(seconds=2.5 * k) for k in (1, 2, 3)]
    assert all(len({t.at for t in batch}) == 1 for batch in batches)


def test_prices_stay_within_bounds_and_are_decimals_with_at_most_8_places_over_10000_steps() -> None:
    assets = one_asset_per_category()
    snapshot = {a.asset_id: a for a in assets}
    # Daily steps: ten thousand days of movement, so the walk really meets its bounds.
    batches = source(seed=11, tick_seconds=86_400, catalogue=assets).steps(10_000)

    lowest: dict[str, Decimal] = {}
    highest: dict[str, Decimal] = {}
    for batch in batches:
        for tick in batch:
            assert isinstance(tick.price, Decimal)
            assert places(tick.price) <= 8
            assert "E" not in str(tick.price)
            lowest[tick.asset_id] = min(lowest.get(tick.asset_id, tick.price), tick.price)
            highest[tick.asset_id] = max(highest.get(tick.asset_id, tick.price), tick.price)
    for asset_id, asset in snapshot.items():
        if asset.category == "stablecoin":
            low, high = asset.price_usd * Decimal("0.99"), asset.price_usd * Decimal("1.01")
        else:
            low, high = asset.price_usd * Decimal("0.2"), asset.price_usd * 5
        assert low <= lowest[asset_id] <= highest[asset_id] <= high, asset_id
    # Volatile assets do wander across most of their band in that time.
    btc = snapshot["BTC"]
    assert highest["BTC"] > btc.price_usd * 2
    assert lowest["BTC"] < btc.price_usd / 2


def test_stablecoins_barely_move_at_one_second_ticks() -> None:
    usdt = [a for a in load_catalogue() if a.asset_id == "USDT"]

    prices = [batch[0].price for batch in source(seed=2, catalogue=usdt).steps(2_000)]

    assert all(Decimal("0.999") <= p <= Decimal("1.001") for p in prices)
    assert len(set(prices)) > 1


def test_prices_have_at_most_8_significant_digits() -> None:
    for batch in source(seed=4).steps(50):
        for tick in batch:
            assert len(tick.price.normalize().as_tuple().digits) <= 8, tick


async def test_ticks_streams_one_batch_per_interval_stamped_by_the_clock() -> None:
    clock = FakeClock(START)
    simulated = SimulatedPriceSource(load_catalogue(), clock=clock, seed=9, tick_seconds=0.01)
    expected = source(seed=9, tick_seconds=0.01).steps(5)
    received: list[list[Tick]] = []

    async with asyncio.timeout(5):
        async for batch in simulated.ticks():
            received.append(batch)
            if len(received) == 5:
                await simulated.close()

    assert [[(t.asset_id, t.price) for t in b] for b in received] == [
        [(t.asset_id, t.price) for t in b] for b in expected
    ]
    assert all(t.at == START for b in received for t in b)
