"""The simulated market: a seeded, reproducible geometric random walk per catalogue asset."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal

from cnop.common.clock import Clock
from cnop.market.catalogue import CatalogueAsset
from cnop.market.prices import Tick
from cnop.market.sources.numbers import PRICE_MAX_PLACES, round_price

# Standard deviation of daily log returns by catalogue category; roughly what these markets show.
DAILY_VOLATILITY: Mapping[str, float] = {
    "layer-1": 0.04,
    "smart-contract": 0.045,
    "payments": 0.04,
    "exchange": 0.035,
    "oracle": 0.05,
    "layer-2": 0.055,
    "defi": 0.055,
    "storage": 0.055,
    "meme": 0.07,
}
DEFAULT_DAILY_VOLATILITY = 0.05
# A simulated price stays within these multiples of its catalogue snapshot (reflected at the edges).
SIMULATED_PRICE_BOUNDS = (Decimal("0.2"), Decimal(5))
# Stablecoins revert to their peg (half-life about seven minutes) and never leave ±1% of it.
STABLECOIN_DAILY_VOLATILITY = 0.003
STABLECOIN_REVERSION_SECONDS = 600.0
STABLECOIN_BAND = Decimal("0.01")

_SECONDS_PER_DAY = 86_400.0


@dataclass(slots=True)
class _WalkingPrice:
    asset_id: str
    snapshot: float
    rng: random.Random
    sigma: float  # per step, in log-price
    reversion: float  # fraction of the distance to the peg closed per step; 0 for a free walk
    lower: float  # log bounds relative to the snapshot
    upper: float
    floor: float  # the bounds in price, each exactly a value with at most 8 significant digits
    ceiling: float
    log_offset: float = 0.0

    def step(self) -> Decimal:
        shock = self.sigma * self.rng.gauss(0.0, 1.0)
        # Driftless in log-price, so the median price stays at the snapshot however long it runs.
        self.log_offset += shock - self.reversion * self.log_offset
        # Reflect off the bounds (twice covers any step shorter than the band), then clamp.
        for _ in range(2):
            if self.log_offset > self.upper:
                self.log_offset = 2 * self.upper - self.log_offset
            elif self.log_offset < self.lower:
                self.log_offset = 2 * self.lower - self.log_offset
        self.log_offset = min(max(self.log_offset, self.lower), self.upper)
        price = min(max(self.snapshot * math.exp(self.log_offset), self.floor), self.ceiling)
        # Rounding to 8 significant digits is monotonic and the bounds survive it unchanged,
        # so the emitted Decimal stays within them.
        rounded = Decimal(f"{price:#.8g}")
        exponent = rounded.as_tuple().exponent
        if isinstance(exponent, int) and -PRICE_MAX_PLACES <= exponent <= 0:
            return rounded
        return round_price(rounded)


class RandomWalk:
    """The simulated market: a geometric random walk per asset, reproducible from `seed`.

    Each asset draws from its own `random.Random(f"{seed}:{asset_id}")`, so its path depends
    only on the seed, its snapshot and its category, not on which other assets are listed.
    The float arithmetic stays inside the walk; every price leaves it as a rounded Decimal.
    """

    def __init__(
        self,
        catalogue: Iterable[CatalogueAsset],
        *,
        seed: int,
        tick_seconds: float,
        volatility_scale: float = 1.0,
    ) -> None:
        if tick_seconds <= 0:
            raise ValueError("tick_seconds must be positive")
        step_days = tick_seconds / _SECONDS_PER_DAY
        self._prices: list[_WalkingPrice] = []
        for asset in sorted(catalogue, key=lambda a: a.asset_id):
            rng = random.Random(f"{seed}:{asset.asset_id}")
            if asset.category == "stablecoin":
                low, high = 1 - STABLECOIN_BAND, 1 + STABLECOIN_BAND
                sigma = STABLECOIN_DAILY_VOLATILITY * math.sqrt(step_days) * volatility_scale
                reversion = min(1.0, tick_seconds / STABLECOIN_REVERSION_SECONDS)
            else:
                low, high = SIMULATED_PRICE_BOUNDS
                daily = DAILY_VOLATILITY.get(asset.category, DEFAULT_DAILY_VOLATILITY)
                sigma = daily * math.sqrt(step_days) * volatility_scale
                reversion = 0.0
            self._prices.append(
                _WalkingPrice(
                    asset_id=asset.asset_id,
                    snapshot=float(asset.price_usd),
                    rng=rng,
                    sigma=sigma,
                    reversion=reversion,
                    lower=math.log(low),
                    upper=math.log(high),
                    floor=float(round_price(asset.price_usd * low, ROUND_UP)),
                    ceiling=float(round_price(asset.price_usd * high, ROUND_DOWN)),
                )
            )

    def resume(self, prices: Mapping[str, Decimal]) -> None:
        """Continue each listed asset's walk from `prices` (clamped to its bounds), not its snapshot."""
        for walking in self._prices:
            price = prices.get(walking.asset_id)
            if price is not None and price > 0 and walking.snapshot > 0:
                offset = math.log(float(price) / walking.snapshot)
                walking.log_offset = min(max(offset, walking.lower), walking.upper)

    def step(self) -> list[tuple[str, Decimal]]:
        """Advance every asset one tick; (asset_id, price) in asset-id order."""
        return [(walking.asset_id, walking.step()) for walking in self._prices]


def simulated_batches(
    catalogue: Iterable[CatalogueAsset],
    *,
    seed: int,
    tick_seconds: float,
    start: datetime,
    volatility_scale: float = 1.0,
) -> Iterator[list[Tick]]:
    """The simulated market as an endless, pure, synchronous sequence of batches.

    Batch k is stamped `start + k * tick_seconds` (k from 1). The same arguments always give
    the same sequence; nothing sleeps.
    """
    walk = RandomWalk(catalogue, seed=seed, tick_seconds=tick_seconds, volatility_scale=volatility_scale)
    step = timedelta(seconds=tick_seconds)
    at = start
    while True:
        at += step
        yield [Tick(asset_id, price, at) for asset_id, price in walk.step()]


class SimulatedPriceSource:
    """A tick every `tick_seconds` for every catalogue asset, from a seeded `RandomWalk`."""

    name = "simulated"

    def __init__(
        self,
        catalogue: Iterable[CatalogueAsset],
        *,
        clock: Clock,
        seed: int = 42,
        tick_seconds: float = 1.0,
        volatility_scale: float = 1.0,
    ) -> None:
        self._clock = clock
        self._tick_seconds = tick_seconds
        self._walk = RandomWalk(catalogue, seed=seed, tick_seconds=tick_seconds, volatility_scale=volatility_scale)
        self._closed = False

    def steps(self, n: int, start: datetime | None = None) -> list[list[Tick]]:
        """Advance the walk `n` ticks at once, without sleeping.

        Batch k is stamped `start + k * tick_seconds`; `start` defaults to the clock's now.
        """
        at = self._clock.now() if start is None else start
        step = timedelta(seconds=self._tick_seconds)
        batches = []
        for _ in range(n):
            at += step
            batches.append([Tick(asset_id, price, at) for asset_id, price in self._walk.step()])
        return batches

    def resume(self, prices: Mapping[str, Decimal]) -> None:
        """Continue from the prices another publisher left (a takeover of the price lease)."""
        self._walk.resume(prices)

    async def ticks(self) -> AsyncIterator[list[Tick]]:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not self._closed:
            now = self._clock.now()
            yield [Tick(asset_id, price, now) for asset_id, price in self._walk.step()]
            due += self._tick_seconds
            # After a stall, carry on from now rather than bursting to catch up.
            due = max(due, loop.time() - self._tick_seconds)
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def close(self) -> None:
        self._closed = True
