"""Replayed history: a CSV of `timestamp,asset_id,price`, one batch per distinct timestamp."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import re
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from cnop.common.clock import Clock
from cnop.common.money import parse_decimal
from cnop.market.catalogue import ASSET_ID_PATTERN
from cnop.market.prices import Tick
from cnop.market.sources.numbers import plain_number

log = logging.getLogger(__name__)

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
            price = plain_number(parse_decimal(row[price_index]))
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
