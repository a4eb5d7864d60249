"""Market prices: ticks, the source protocol, and the price book that trades read from.

A `PriceSource` yields batches of `Tick`s; a `PriceFeed` (in `cnop.market.feed`) applies them
to the `PriceBook`, which holds each asset's current price and a bounded history, and fans every
accepted batch out to subscribers (the SSE stream, the trigger engine).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Protocol

from cnop.common.clock import Clock
from cnop.common.exceptions import PriceUnavailable
from cnop.common.money import MONEY_CONTEXT, or_none
from cnop.market.catalogue import CatalogueAsset

log = logging.getLogger(__name__)

DEFAULT_HISTORY_SIZE = 1440
DEFAULT_SUBSCRIBER_QUEUE_SIZE = 256

DAY = timedelta(days=1)
WEEK = timedelta(days=7)
MONTH = timedelta(days=30)

# The prices the book accepts, from any source (a feed, a replay file, an admin): beyond them a
# tick is surely wrong, and valuation of stored quantities stays within exact arithmetic.
MIN_MARKET_PRICE = Decimal("0.00000001")
MAX_MARKET_PRICE = Decimal(1_000_000_000)

# Percentages are reported to four places; the absolute change is exact.
PERCENT_PLACES = Decimal("0.0001")

_MINUTE = 60
_HOUR = 3600
# One point per minute for a day and per hour for a month, plus two: the newest bucket is still
# filling, and the price in effect at the cutoff is the last tick of the bucket before it.
_MINUTE_POINTS = 24 * 60 + 2
_HOUR_POINTS = 30 * 24 + 2


@dataclass(frozen=True, slots=True)
class Tick:
    """The price of one asset at one moment: `price` is USD per unit, `at` is aware UTC."""

    asset_id: str
    price: Decimal
    at: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.price, Decimal):
            raise TypeError(f"price must be a Decimal, not {type(self.price).__name__}")
        if self.at.tzinfo is None:
            raise ValueError("tick time must be timezone-aware")


class PriceSource(Protocol):
    """Where ticks come from.

    `ticks()` is an async generator: each item is one batch, normally one `Tick` per asset per
    tick interval (a source may send fewer, e.g. a manual price change). It ends only if the
    source is exhausted (a replay without `loop`) or closed.
    """

    @property
    def name(self) -> str:
        """A short label for logs and health checks: `simulated`, `replay`, `http`, `manual`."""
        ...

    def ticks(self) -> AsyncIterator[list[Tick]]:
        """Yield batches of ticks until closed or exhausted."""
        ...

    async def close(self) -> None:
        """Stop producing and release connections and files."""
        ...


@dataclass(frozen=True, slots=True)
class PriceStats:
    """What the inventory pages show about an asset's price, measured back from its latest tick.

    The 7-day and 30-day changes are None until history reaches back that far.
    `price_change_24h` is exact (`price` minus the price 24 hours before the latest tick, or the
    first price recorded when history is younger than that). Percentages are relative to that
    reference price, rounded to four places. High and low span the same window.
    """

    asset_id: str
    price: Decimal
    price_change_24h: Decimal
    price_change_percentage_24h: Decimal | None
    high_24h: Decimal
    low_24h: Decimal
    price_change_percentage_7d: Decimal | None
    price_change_percentage_30d: Decimal | None
    last_updated: datetime


@dataclass(frozen=True, slots=True)
class PricePoint:
    """One bucket of kept history (shared between processes): its last tick and its extremes.

    `resolution` is the bucket width in seconds (60 or 3600), `bucket` the tick's epoch seconds
    divided by it.
    """

    resolution: int
    bucket: int
    last: Tick
    high: Decimal
    low: Decimal


@dataclass(slots=True)
class _Bucket:
    """The ticks of one time bucket, summarised: the last tick and the extremes."""

    key: int
    last: Tick
    high: Decimal
    low: Decimal


class _Tier:
    """One resolution of an asset's history: at most one bucket per `resolution` seconds."""

    __slots__ = ("buckets", "resolution")

    def __init__(self, resolution: int, points: int) -> None:
        self.resolution = resolution
        self.buckets: deque[_Bucket] = deque(maxlen=points)

    def add(self, tick: Tick, epoch_seconds: int) -> None:
        key = epoch_seconds // self.resolution
        buckets = self.buckets
        if buckets and buckets[-1].key == key:
            bucket = buckets[-1]
            bucket.last = tick
            if tick.price > bucket.high:
                bucket.high = tick.price
            elif tick.price < bucket.low:
                bucket.low = tick.price
        else:
            buckets.append(_Bucket(key, tick, tick.price, tick.price))


class _AssetHistory:
    """An asset's bounded history at three resolutions.

    - `raw`: the most recent `history_size` ticks, exact;
    - `minutes`: the last tick (plus high and low) of each minute for the last 24 hours, so the
      24-hour figures still work when ticks arrive every second and `raw` spans only minutes;
    - `hours`: the same per hour for the last 30 days, for the 7- and 30-day changes.

    Memory per asset is bounded by `history_size + 1442 + 722` points whatever the tick rate.
    Figures are exact while `raw` reaches back far enough, and otherwise precise to the bucket.
    """

    __slots__ = ("first", "hours", "minutes", "raw")

    def __init__(self, history_size: int) -> None:
        self.raw: deque[Tick] = deque(maxlen=history_size)
        self.minutes = _Tier(_MINUTE, _MINUTE_POINTS)
        self.hours = _Tier(_HOUR, _HOUR_POINTS)
        self.first: Tick | None = None

    @property
    def latest(self) -> Tick:
        return self.raw[-1]

    def add(self, tick: Tick, epoch_seconds: int) -> None:
        if self.first is None:
            self.first = tick
        self.raw.append(tick)
        self.minutes.add(tick, epoch_seconds)
        self.hours.add(tick, epoch_seconds)

    def price_at(self, moment: datetime) -> Decimal | None:
        """The price in effect at `moment` (last tick at or before it), or None if history is younger."""
        if self.raw[0].at <= moment:
            index = bisect.bisect_right(self.raw, moment, key=lambda t: t.at) - 1
            return self.raw[index].price
        for tier in (self.minutes, self.hours):
            buckets = tier.buckets
            if buckets[0].last.at <= moment:
                index = bisect.bisect_right(buckets, moment, key=lambda b: b.last.at) - 1
                return buckets[index].last.price
        return None

    def extremes_since(self, moment: datetime) -> tuple[Decimal, Decimal]:
        """Highest and lowest price from `moment` to the latest tick."""
        if self.raw[0].at <= moment:
            prices = [t.price for t in self.raw if t.at >= moment]
        else:
            prices = [p for b in self.minutes.buckets if b.last.at >= moment for p in (b.high, b.low)]
            prices.extend(t.price for t in self.raw)
        return max(prices), min(prices)

    def timeline(self) -> Iterator[Tick]:
        """Every stored point, oldest first, each time range at the finest resolution kept."""
        raw_start = self.raw[0].at
        minute_start = self.minutes.buckets[0].last.at
        for bucket in self.hours.buckets:
            if bucket.last.at < minute_start:
                yield bucket.last
        for bucket in self.minutes.buckets:
            if bucket.last.at < raw_start:
                yield bucket.last
        yield from self.raw


def _percentage(change: Decimal, reference: Decimal) -> Decimal | None:
    return or_none(
        lambda: (change * 100 / reference).quantize(PERCENT_PLACES, rounding=ROUND_HALF_EVEN, context=MONEY_CONTEXT)
    )


class PriceBook:
    """The current price of every asset, a bounded history, and the subscribers to new ticks.

    Everything runs on one event loop: `apply` is synchronous and never blocks, so readers
    always see a consistent book. Ticks older than an asset's current tick are ignored, so the
    current price only moves forward in time.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        history_size: int = DEFAULT_HISTORY_SIZE,
        subscriber_queue_size: int = DEFAULT_SUBSCRIBER_QUEUE_SIZE,
    ) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        self._clock = clock
        self._history_size = history_size
        self._subscriber_queue_size = subscriber_queue_size
        self._assets: dict[str, _AssetHistory] = {}
        # Stats scan the history, and the asset list asks for every asset on every request;
        # they are kept until the asset's next tick.
        self._stats: dict[str, PriceStats] = {}
        self._subscribers: set[asyncio.Queue[list[Tick]]] = set()
        self._last_applied_at: datetime | None = None
        self._version = 0
        self.dropped_batches = 0
        """Batches discarded from full subscriber queues (each drop loses the oldest batch)."""

    @classmethod
    def seed(
        cls,
        catalogue: Iterable[CatalogueAsset],
        clock: Clock,
        *,
        history_size: int = DEFAULT_HISTORY_SIZE,
        subscriber_queue_size: int = DEFAULT_SUBSCRIBER_QUEUE_SIZE,
    ) -> PriceBook:
        """A book whose every asset is priced at its catalogue snapshot, stamped `clock.now()`."""
        book = cls(clock, history_size=history_size, subscriber_queue_size=subscriber_queue_size)
        now = clock.now()
        book.apply([Tick(asset.asset_id, asset.price_usd, now) for asset in catalogue])
        return book

    # --- writing ------------------------------------------------------------------------------

    def apply(self, ticks: Iterable[Tick]) -> list[Tick]:
        """Record a batch and publish the accepted ticks to every subscriber; returns them.

        A tick with a price outside [`MIN_MARKET_PRICE`, `MAX_MARKET_PRICE`] (non-finite, zero,
        negative, absurd), or older than the asset's current tick, is skipped with a warning
        rather than raising: a bad tick never stops the feed, and never reaches a valuation.
        """
        accepted: list[Tick] = []
        # A batch usually shares one moment; convert it to epoch seconds once.
        moment: datetime | None = None
        epoch_seconds = 0
        for tick in ticks:
            if not tick.price.is_finite() or not MIN_MARKET_PRICE <= tick.price <= MAX_MARKET_PRICE:
                log.warning("price book: ignored %s tick with invalid price %s", tick.asset_id, tick.price)
                continue
            history = self._assets.get(tick.asset_id)
            if history is None:
                history = self._assets[tick.asset_id] = _AssetHistory(self._history_size)
            elif tick.at < history.latest.at:
                log.debug("price book: ignored out-of-order %s tick at %s", tick.asset_id, tick.at)
                continue
            if tick.at != moment:
                moment, epoch_seconds = tick.at, math.floor(tick.at.timestamp())
            history.add(tick, epoch_seconds)
            self._stats.pop(tick.asset_id, None)
            accepted.append(tick)
        if accepted:
            self._version += 1
            newest = max(t.at for t in accepted)
            if self._last_applied_at is None or newest > self._last_applied_at:
                self._last_applied_at = newest
            self._publish(accepted)
        return accepted

    def forget(self, asset_ids: Iterable[str]) -> None:
        """Drop these assets' history, so that a shared history can take its place in full.

        A process following a shared price stream starts from the shared latest prices and
        history, not from its own start-up seed (stamped at its own start, it would hide the
        shared buckets after it and give each process different 24-hour figures).
        """
        for asset_id in asset_ids:
            self._assets.pop(asset_id, None)
            self._stats.pop(asset_id, None)
        self._version += 1

    def restore(self, asset_id: str, points: Iterable[Tick]) -> int:
        """Put older points (kept in the store across a restart) before the asset's history.

        Only points older than the asset's first tick in memory are taken; nothing is published
        and the current price does not change. Returns how many points were taken.
        """
        current = self._assets.get(asset_id)
        first = current.raw[0].at if current is not None else None
        by_time = {
            p.at: p for p in points if p.asset_id == asset_id and p.price > 0 and (first is None or p.at < first)
        }
        older = [by_time[moment] for moment in sorted(by_time)]  # one point per moment, oldest first
        if not older:
            return 0
        history = _AssetHistory(self._history_size)
        for tick in [*older, *(current.raw if current is not None else ())]:
            history.add(tick, math.floor(tick.at.timestamp()))
        self._assets[asset_id] = history
        self._stats.pop(asset_id, None)
        self._version += 1
        return len(older)

    def restore_points(self, asset_id: str, points: Iterable[PricePoint], *, first: Tick | None = None) -> int:
        """Rebuild an asset's per-minute and per-hour history from kept buckets (last, high, low).

        Unlike `restore`, the extremes inside each bucket survive, so a process that loads the
        shared history computes the same 24-hour figures as one that saw every tick. Only
        buckets whose last tick is not newer than the asset's first tick in memory are taken (that
        first tick and the ones after it are added again on top, merging into their bucket);
        nothing is published and the current price does not change. `first` is the first price
        ever recorded (what the 24-hour change is measured from while history is younger than a
        day), if known. Returns how many were taken.
        """
        current = self._assets.get(asset_id)
        in_memory = current.raw[0].at if current is not None else None
        tiers: dict[int, dict[int, PricePoint]] = {_MINUTE: {}, _HOUR: {}}
        for point in points:
            tier = tiers.get(point.resolution)
            if tier is None or point.last.asset_id != asset_id or point.last.price <= 0:
                continue
            if in_memory is not None and point.last.at > in_memory:  # (its own tick merges again)
                continue
            tier[point.bucket] = point
        taken = sum(len(tier) for tier in tiers.values())
        if not taken:
            # No bucket before the ticks in memory, but the first price ever recorded still is
            # what the 24-hour change is measured from.
            if current is not None and first is not None and current.first is not None and first.at < current.first.at:
                current.first = first
                self._stats.pop(asset_id, None)
                self._version += 1
            return 0
        history = _AssetHistory(self._history_size)
        for resolution, target in ((_MINUTE, history.minutes), (_HOUR, history.hours)):
            for key in sorted(tiers[resolution]):
                point = tiers[resolution][key]
                high, low = max(point.high, point.last.price), min(point.low, point.last.price)
                target.buckets.append(_Bucket(key, point.last, high, low))
        oldest = min((p.last for tier in tiers.values() for p in tier.values()), key=lambda t: t.at)
        history.first = first if first is not None and first.at <= oldest.at else oldest
        for tick in current.raw if current is not None else ():
            history.add(tick, math.floor(tick.at.timestamp()))
        if not history.raw:  # history without a current price: the newest point is the current price
            newest = max((p.last for tier in tiers.values() for p in tier.values()), key=lambda t: t.at)
            history.raw.append(newest)
        self._assets[asset_id] = history
        self._stats.pop(asset_id, None)
        self._version += 1
        return taken

    def _publish(self, batch: list[Tick]) -> None:
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
                self.dropped_batches += 1
            queue.put_nowait(batch)

    # --- subscribers --------------------------------------------------------------------------

    def subscribe(self, maxsize: int | None = None) -> asyncio.Queue[list[Tick]]:
        """A bounded queue that receives every accepted batch; when full the oldest is dropped."""
        queue: asyncio.Queue[list[Tick]] = asyncio.Queue(maxsize=maxsize or self._subscriber_queue_size)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[list[Tick]]) -> None:
        """Stop delivering to `queue`; unknown queues are ignored."""
        self._subscribers.discard(queue)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    # --- reading ------------------------------------------------------------------------------

    @property
    def asset_ids(self) -> list[str]:
        """Assets with at least one price, sorted."""
        return sorted(self._assets)

    @property
    def version(self) -> int:
        """A number that changes whenever anything a reader of the book can see changes.

        Every accepted batch, `forget`, `restore` and `restore_points` moves it on, so whatever
        is computed from the book's prices and figures (a rendered asset list) stays valid for
        as long as the version is the same. It only ever grows, within one process.
        """
        return self._version

    @property
    def last_applied_at(self) -> datetime | None:
        """Time of the newest tick accepted for any asset (for health checks)."""
        return self._last_applied_at

    def current(self, asset_id: str) -> Tick | None:
        """The latest tick for `asset_id`, however old, or None if it never had a price."""
        history = self._assets.get(asset_id)
        return history.latest if history is not None else None

    def snapshot(self) -> dict[str, Tick]:
        """The latest tick of every asset."""
        return {asset_id: history.latest for asset_id, history in self._assets.items()}

    def fresh_price(self, asset_id: str, max_age_seconds: float) -> Decimal:
        """The current price if it is at most `max_age_seconds` old by the clock; the price to trade at.

        Raises PriceUnavailable when the asset has no price or its latest tick is too old.
        """
        tick = self.current(asset_id)
        if tick is None:
            raise PriceUnavailable(f"No market price for {asset_id}")
        age = (self._clock.now() - tick.at).total_seconds()
        if age > max_age_seconds:
            raise PriceUnavailable(
                f"The last {asset_id} price is {age:.0f} s old (limit {max_age_seconds:g} s)",
                asset_id=asset_id,
            )
        return tick.price

    def stats(self, asset_id: str) -> PriceStats | None:
        """24-hour, 7- and 30-day figures, measured back from the latest tick; None if never priced."""
        cached = self._stats.get(asset_id)
        if cached is not None:
            return cached
        history = self._assets.get(asset_id)
        if history is None:
            return None
        self._stats[asset_id] = stats = self._measure(asset_id, history)
        return stats

    def _measure(self, asset_id: str, history: _AssetHistory) -> PriceStats:
        latest = history.latest
        day_ago = latest.at - DAY
        reference = history.price_at(day_ago)
        if reference is None:
            assert history.first is not None
            reference = history.first.price
        change = latest.price - reference
        high, low = history.extremes_since(day_ago)
        return PriceStats(
            asset_id=asset_id,
            price=latest.price,
            price_change_24h=change,
            price_change_percentage_24h=_percentage(change, reference),
            high_24h=high,
            low_24h=low,
            price_change_percentage_7d=self._change_percentage(history, latest.at - WEEK),
            price_change_percentage_30d=self._change_percentage(history, latest.at - MONTH),
            last_updated=latest.at,
        )

    @staticmethod
    def _change_percentage(history: _AssetHistory, since: datetime) -> Decimal | None:
        reference = history.price_at(since)
        if reference is None:
            return None
        return _percentage(history.latest.price - reference, reference)

    def history(
        self, asset_id: str, since: datetime | None = None, interval_seconds: float | None = None
    ) -> list[Tick]:
        """Stored ticks from `since` on, oldest first, thinned to the last tick per `interval_seconds`.

        Older stretches come from the coarser tiers (per minute, then per hour), so the result
        never has finer resolution than was kept. Unknown assets give an empty list.
        """
        history = self._assets.get(asset_id)
        if history is None:
            return []
        if interval_seconds is not None and interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        points = [t for t in history.timeline() if since is None or t.at >= since]
        if interval_seconds is None:
            return points
        thinned: list[Tick] = []
        last_key: int | None = None
        for tick in points:
            key = int(tick.at.timestamp() // interval_seconds)
            if key == last_key:
                thinned[-1] = tick
            else:
                thinned.append(tick)
                last_key = key
        return thinned
