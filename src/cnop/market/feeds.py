"""Price sources and the feed that applies them to the price book.

`open_price_source(spec, ...)` picks one from `CNOP_PRICE_SOURCE`:

- `simulated` (default): a seeded, reproducible random walk per asset;
- `replay:PATH.csv`: historical prices from a CSV file `timestamp,asset_id,price`;
- `http:URL`: a CoinGecko-compatible `/coins/markets` endpoint, polled;
- `manual`: prices set by hand (the admin endpoint, tests).

`PriceFeed(source, book).run()` consumes a source into a `PriceBook` until cancelled.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import math
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_UP, Decimal
from pathlib import Path
from typing import Any

import httpx2

import cnop
from cnop.common.clock import Clock
from cnop.common.config import Settings
from cnop.common.money import MONEY_CONTEXT, parse_decimal
from cnop.market.catalogue import ASSET_ID_PATTERN, CatalogueAsset
from cnop.market.prices import PriceBook, PriceSource, Tick

log = logging.getLogger(__name__)

PRICE_SIGNIFICANT_DIGITS = 8
PRICE_MAX_PLACES = 8


def round_price(value: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
    """`value` to 8 significant digits and at most 8 places, in plain (non-exponent) notation."""
    exponent = min(0, max(value.adjusted() - (PRICE_SIGNIFICANT_DIGITS - 1), -PRICE_MAX_PLACES))
    return value.quantize(Decimal(1).scaleb(exponent), rounding=rounding, context=MONEY_CONTEXT)


# No price (or upstream figure) this system accepts is anywhere near this large.
LARGEST_ACCEPTED_NUMBER = Decimal("1e18")


def _plain(value: Decimal) -> Decimal:
    """`1E+3` written as `1000` (an exponent form must never reach a client).

    Raises ValueError for a magnitude of 10^18 or more, which no price here can have.
    """
    if abs(value) >= LARGEST_ACCEPTED_NUMBER:
        raise ValueError(f"number {value} is implausibly large")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        return value.quantize(Decimal(1), context=MONEY_CONTEXT)
    return value


# --- simulated ----------------------------------------------------------------------------------

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


# --- replay -------------------------------------------------------------------------------------

REPLAY_COLUMNS = ("timestamp", "asset_id", "price")
_EPOCH_SECONDS = re.compile(r"^\d{1,12}(\.\d{1,9})?$")
_LOGGED_BAD_ROWS = 20


@dataclass(frozen=True, slots=True)
class ReplayBatch:
    """The prices recorded at one timestamp of a replay file."""

    at: datetime
    prices: tuple[tuple[str, Decimal], ...]


def parse_replay_timestamp(text: str) -> datetime:
    """RFC 3339 (a naive time is taken as UTC) or epoch seconds, as aware UTC."""
    text = text.strip()
    if _EPOCH_SECONDS.fullmatch(text):
        return datetime.fromtimestamp(float(text), UTC)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_replay_csv(
    text: str, *, known_assets: Collection[str] | None = None, origin: str = "replay"
) -> list[ReplayBatch]:
    """Group the rows of a `timestamp,asset_id,price` CSV into batches in time order.

    A missing or wrong header raises ValueError. A malformed row (bad timestamp, asset id or
    price, a non-positive price, an asset not in `known_assets`) is skipped with a warning. If
    one timestamp lists an asset twice, the later row wins.
    """
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    columns = [c.strip().lower() for c in header] if header else []
    missing = [c for c in REPLAY_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{origin}: header must name {', '.join(REPLAY_COLUMNS)}; missing {', '.join(missing)}")
    at_index, asset_index, price_index = (columns.index(c) for c in REPLAY_COLUMNS)
    grouped: dict[datetime, dict[str, Decimal]] = {}
    skipped = 0
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        try:
            if len(row) != len(columns):
                raise ValueError(f"expected {len(columns)} fields, found {len(row)}")
            at = parse_replay_timestamp(row[at_index])
            asset_id = row[asset_index].strip().upper()
            if not ASSET_ID_PATTERN.fullmatch(asset_id):
                raise ValueError(f"bad asset id {row[asset_index]!r}")
            if known_assets is not None and asset_id not in known_assets:
                raise ValueError(f"asset {asset_id} is not in the catalogue")
            price = _plain(parse_decimal(row[price_index]))
            if price <= 0:
                raise ValueError(f"price must be positive, not {price}")
        except (ValueError, OverflowError, OSError) as exc:
            skipped += 1
            if skipped <= _LOGGED_BAD_ROWS:
                log.warning("%s: skipped line %d: %s", origin, rows.line_num, exc)
            continue
        grouped.setdefault(at, {})[asset_id] = price
    if skipped:
        log.warning("%s: skipped %d malformed rows in all", origin, skipped)
    return [ReplayBatch(at, tuple(grouped[at].items())) for at in sorted(grouped)]


class ReplayPriceSource:
    """Replays a CSV of historical prices, one batch per distinct timestamp, in time order.

    Pacing: one batch every `interval_seconds` (0 = as fast as the consumer takes them), or, if
    `speed` is given, the file's own gaps divided by `speed`. With `restamp` (the default) each
    tick is stamped with the clock's now when emitted, so replayed prices count as fresh; the
    file's timestamps then only order and group the rows.
    """

    name = "replay"

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock,
        interval_seconds: float = 1.0,
        speed: float | None = None,
        loop: bool = False,
        restamp: bool = True,
        known_assets: Collection[str] | None = None,
    ) -> None:
        if interval_seconds < 0:
            raise ValueError("interval_seconds must not be negative")
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive")
        if loop and not restamp:
            raise ValueError("a looping replay must restamp its ticks, or the second pass would be stale")
        # Read at construction so a missing or empty file fails at start-up, not later.
        text = Path(path).read_text(encoding="utf-8")
        self.batches = parse_replay_csv(text, known_assets=known_assets, origin=f"replay {path}")
        if not self.batches:
            raise ValueError(f"replay {path}: no valid rows")
        self._clock = clock
        self._interval = interval_seconds
        self._speed = speed
        self._loop = loop
        self._restamp = restamp
        self._position = 0
        self._closed = False

    def _pause_after(self, index: int) -> float:
        if self._speed is None:
            return self._interval
        following = self.batches[index + 1] if index + 1 < len(self.batches) else None
        if following is None:
            return 0.0
        return (following.at - self.batches[index].at).total_seconds() / self._speed

    async def ticks(self) -> AsyncIterator[list[Tick]]:
        while not self._closed:
            if self._position >= len(self.batches):
                if not self._loop:
                    log.info("replay: finished after %d batches", len(self.batches))
                    return
                self._position = 0
            index = self._position
            self._position += 1
            batch = self.batches[index]
            at = self._clock.now() if self._restamp else batch.at
            yield [Tick(asset_id, price, at) for asset_id, price in batch.prices]
            # sleep(0) still yields to the loop, so a fast replay never starves other tasks.
            await asyncio.sleep(self._pause_after(index))

    async def close(self) -> None:
        self._closed = True


# --- http ---------------------------------------------------------------------------------------


class PricePollFailed(Exception):
    """One poll of an HTTP price endpoint gave no usable prices; `retry_after` is the server's hint."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class UpstreamMarketData:
    """Figures an upstream reported next to the price; informational, each None if missing or bad."""

    asset_id: str
    price_change_percentage_24h: Decimal | None
    high_24h: Decimal | None
    low_24h: Decimal | None
    at: datetime


def backoff_delay(failures: int, *, initial: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait after `failures` consecutive failures.

    Doubles from `initial` up to `cap`; the upper half is random so clients never retry in step.
    """
    base = min(cap, initial * 2.0 ** min(max(failures - 1, 0), 32))
    return base / 2 + rng.uniform(0.0, base / 2)


def markets_endpoint(url: str) -> str:
    """`{url}/coins/markets`, unless `url` already is that endpoint."""
    base = url.strip().rstrip("/")
    if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", base):
        raise ValueError(f"price endpoint must be an http(s) URL, not {url!r}")
    if base.split("?", 1)[0].endswith("/coins/markets"):
        return base
    return f"{base}/coins/markets"


def _json_number(value: Any) -> Decimal | None:
    """A finite JSON number of sane magnitude, in plain notation; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    number = Decimal(value)
    if not number.is_finite() or abs(number) >= LARGEST_ACCEPTED_NUMBER:
        return None
    return _plain(number)


def _positive_number(value: Any) -> Decimal | None:
    number = _json_number(value)
    return number if number is not None and number > 0 else None


class HttpPriceSource:
    """Polls a CoinGecko-compatible `GET /coins/markets` and emits one batch per good response.

    Entries are matched to catalogue assets by CoinGecko `id`, else by upper-cased `symbol`.
    A price must be a JSON number, finite, positive, and within `max_deviation` times (either
    way) of the asset's catalogue snapshot; bad entries are skipped with a warning. A failed
    poll (timeout, non-200, oversized or non-JSON body, not a list, no usable price) never ends
    the stream: the source waits with jittered exponential back-off and tries again.
    """

    name = "http"

    def __init__(
        self,
        url: str,
        catalogue: Iterable[CatalogueAsset],
        *,
        clock: Clock,
        interval_seconds: float = 15.0,
        timeout_seconds: float = 5.0,
        backoff_initial_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
        max_deviation: Decimal = Decimal(1000),
        max_body_bytes: int = 5_000_000,
        headers: Mapping[str, str] | None = None,
        trust_env: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = markets_endpoint(url)
        self._assets = list(catalogue)
        self._by_coingecko_id = {a.coingecko_id: a for a in self._assets}
        self._by_symbol = {a.symbol.upper(): a for a in self._assets}
        self._params = {
            "vs_currency": "usd",
            "ids": ",".join(a.coingecko_id for a in self._assets),
            "per_page": "250",
            "page": "1",
        }
        self._clock = clock
        self._interval = interval_seconds
        self._timeout = timeout_seconds
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._max_deviation = max_deviation
        self._max_body_bytes = max_body_bytes
        self._rng = rng or random.Random()
        self._client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(timeout_seconds),
            headers={
                "Accept": "application/json",
                "User-Agent": f"cnop/{cnop.__version__}",
                **(headers or {}),
            },
            trust_env=trust_env,
        )
        self._closed = False
        self.consecutive_failures = 0
        self.market_data: dict[str, UpstreamMarketData] = {}
        """The latest upstream 24-hour figures per asset, kept from each good poll."""

    async def poll(self) -> list[Tick]:
        """One request: the valid ticks it yields, or PricePollFailed saying why there are none."""
        if self._closed:
            raise PricePollFailed("source is closed")
        try:
            body = await self._fetch()
            try:
                payload = json.loads(body, parse_float=Decimal, parse_constant=Decimal)
            except (ValueError, RecursionError):
                raise PricePollFailed("response is not JSON") from None
            return self._ticks_from(payload)
        except PricePollFailed:
            raise
        except (TimeoutError, httpx2.TimeoutException):
            raise PricePollFailed(f"no answer within {self._timeout:g} s") from None
        except httpx2.HTTPError as exc:
            raise PricePollFailed(f"request failed: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # a poll must never take the feed down
            log.debug("http price source: unexpected error", exc_info=True)
            raise PricePollFailed(f"unexpected {type(exc).__name__}: {exc}") from exc

    async def _fetch(self) -> bytes:
        async with (
            asyncio.timeout(self._timeout),
            self._client.stream("GET", self.endpoint, params=self._params) as response,
        ):
            if response.status_code != 200:
                raise PricePollFailed(
                    f"HTTP {response.status_code}",
                    retry_after=_retry_after(response.headers.get("Retry-After")),
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._max_body_bytes:
                    raise PricePollFailed(f"response larger than {self._max_body_bytes} bytes")
            return bytes(body)

    def _ticks_from(self, payload: Any) -> list[Tick]:
        if not isinstance(payload, list):
            raise PricePollFailed(f"expected a JSON list of markets, got {type(payload).__name__}")
        # An entry must be an object whose `id`, if any, is a string; anything else is malformed.
        entries = [e for e in payload if isinstance(e, dict) and isinstance(e.get("id", ""), str | None)]
        if len(entries) < len(payload):
            log.warning("http price source: ignored %d malformed entries", len(payload) - len(entries))
        matched: dict[str, tuple[CatalogueAsset, dict[str, Any]]] = {}
        for entry in entries:  # by id first: symbols are not unique across coins
            coingecko_id = entry.get("id")
            asset = self._by_coingecko_id.get(coingecko_id) if coingecko_id is not None else None
            if asset is not None:
                matched.setdefault(asset.asset_id, (asset, entry))
        for entry in entries:  # then by symbol, for entries without one of our ids
            coingecko_id, symbol = entry.get("id"), entry.get("symbol")
            if coingecko_id in self._by_coingecko_id:
                continue
            asset = self._by_symbol.get(symbol.upper()) if isinstance(symbol, str) else None
            if asset is not None:
                matched.setdefault(asset.asset_id, (asset, entry))
        now = self._clock.now()
        ticks: list[Tick] = []
        for asset, entry in matched.values():
            raw_price = entry.get("current_price")
            price = _positive_number(raw_price)
            if price is None or not (
                asset.price_usd / self._max_deviation <= price <= asset.price_usd * self._max_deviation
            ):
                log.warning("http price source: ignored %s current_price %.40r", asset.asset_id, raw_price)
                continue
            ticks.append(Tick(asset.asset_id, price, now))
            self.market_data[asset.asset_id] = UpstreamMarketData(
                asset_id=asset.asset_id,
                price_change_percentage_24h=_json_number(entry.get("price_change_percentage_24h")),
                high_24h=_positive_number(entry.get("high_24h")),
                low_24h=_positive_number(entry.get("low_24h")),
                at=now,
            )
        if not ticks:
            raise PricePollFailed(f"no usable prices among {len(payload)} entries")
        return ticks

    async def ticks(self) -> AsyncIterator[list[Tick]]:
        while not self._closed:
            try:
                batch = await self.poll()
            except PricePollFailed as failure:
                if self._closed:
                    return
                self.consecutive_failures += 1
                delay = backoff_delay(
                    self.consecutive_failures,
                    initial=self._backoff_initial,
                    cap=self._backoff_max,
                    rng=self._rng,
                )
                if failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, self._backoff_max))
                log.warning(
                    "http price source: %s (failure %d in a row); retrying in %.1f s",
                    failure,
                    self.consecutive_failures,
                    delay,
                )
            else:
                if self.consecutive_failures:
                    log.info("http price source: recovered after %d failures", self.consecutive_failures)
                self.consecutive_failures = 0
                delay = self._interval
                yield batch
            await asyncio.sleep(delay)

    async def close(self) -> None:
        self._closed = True
        await self._client.aclose()


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


# --- manual -------------------------------------------------------------------------------------


class ManualPriceSource:
    """Prices set by hand: each `set_price` emits a one-tick batch at the clock's now."""

    name = "manual"

    def __init__(self, clock: Clock, *, known_assets: Collection[str] | None = None, queue_size: int = 1000) -> None:
        self._clock = clock
        self._known_assets = known_assets
        self._queue: asyncio.Queue[list[Tick] | None] = asyncio.Queue(maxsize=queue_size)
        self._closed = False

    async def set_price(self, asset_id: str, price: Decimal) -> Tick:
        """Publish `price` for `asset_id` now; raises ValueError for an unknown asset or a bad price."""
        (tick,) = await self.set_prices({asset_id: price})
        return tick

    async def set_prices(self, prices: Mapping[str, Decimal]) -> list[Tick]:
        """Publish several prices as one batch, all stamped with the same moment."""
        if self._closed:
            raise RuntimeError("manual price source is closed")
        now = self._clock.now()
        batch = [Tick(asset_id, self._checked(asset_id, price), now) for asset_id, price in prices.items()]
        if batch:
            self._offer(batch)
        return batch

    def _checked(self, asset_id: str, price: Decimal) -> Decimal:
        if self._known_assets is not None and asset_id not in self._known_assets:
            raise ValueError(f"unknown asset {asset_id!r}")
        if not isinstance(price, Decimal):
            raise TypeError(f"price must be a Decimal, not {type(price).__name__}")
        if not price.is_finite() or price <= 0:
            raise ValueError(f"price must be positive and finite, not {price}")
        return _plain(price)

    def _offer(self, item: list[Tick] | None) -> None:
        if self._queue.full():  # nobody is consuming: forget the oldest rather than block the admin
            self._queue.get_nowait()
        self._queue.put_nowait(item)

    async def ticks(self) -> AsyncIterator[list[Tick]]:
        # Prices set before `close` are still delivered; the stream ends at the close marker.
        while not (self._closed and self._queue.empty()):
            batch = await self._queue.get()
            if batch is None:
                return
            yield batch

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._offer(None)


# --- the feed -----------------------------------------------------------------------------------


class PriceFeed:
    """Applies a source's batches to a price book (and so to its subscribers) until cancelled.

    If the source raises, the error is logged and the source's `ticks()` is opened again after
    `retry_delay_seconds`; the sources keep their state, so they continue where they were. If
    the source ends (a finished replay, a closed source), `run()` returns.
    """

    def __init__(self, source: PriceSource, book: PriceBook, *, retry_delay_seconds: float = 1.0) -> None:
        self.source = source
        self.book = book
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
                self.book.apply(batch)
                self.batches_applied += 1
        finally:
            if isinstance(batches, AsyncGenerator):
                await batches.aclose()


def open_price_source(spec: str, catalogue: Sequence[CatalogueAsset], settings: Settings, clock: Clock) -> PriceSource:
    """The source named by `spec`: `simulated`, `replay:PATH.csv`, `http:URL` or `manual`.

    The tick interval (and the HTTP polling interval) is `settings.price_tick_seconds`.
    Raises ValueError for an unknown spec, and whatever the source raises for a bad argument
    (a missing replay file, a non-http URL).
    """
    text = spec.strip()
    kind, _, argument = text.partition(":")
    kind = kind.lower()
    known_assets = frozenset(asset.asset_id for asset in catalogue)
    if kind == "simulated" and not argument:
        return SimulatedPriceSource(
            catalogue, clock=clock, seed=settings.price_seed, tick_seconds=settings.price_tick_seconds
        )
    if kind == "manual" and not argument:
        return ManualPriceSource(clock, known_assets=known_assets)
    if kind == "replay" and argument:
        return ReplayPriceSource(
            argument, clock=clock, interval_seconds=settings.price_tick_seconds, known_assets=known_assets
        )
    if kind in ("http", "https") and argument:
        # `http:https://host/api/v3` is the documented form; a bare `https://host/...` works too.
        url = text if argument.startswith("//") else argument
        return HttpPriceSource(url, catalogue, clock=clock, interval_seconds=settings.price_tick_seconds)
    raise ValueError(f"unknown price source {spec!r}: expected simulated, replay:PATH.csv, http:URL or manual")
