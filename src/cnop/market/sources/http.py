"""A CoinGecko-compatible `/coins/markets` endpoint, polled, with jittered back-off on failure."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx2

import cnop
from cnop.common.clock import Clock
from cnop.market.catalogue import CatalogueAsset
from cnop.market.prices import Tick
from cnop.market.sources.numbers import LARGEST_ACCEPTED_NUMBER, plain_number

log = logging.getLogger(__name__)


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
    return plain_number(number)


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
