"""Alpaca's crypto market data (`/v1beta3/crypto/us/...`) from our price book.

The house is the only counterparty and fills at one price both ways, so a quote's bid and ask
are that price. A price tick is not a trade between users: latest trades are the latest ticks,
and bars carry no volume (`"0"`). Bars are built from the price history the book keeps (every
tick for the recent past, then per minute for a day, then per hour for a month), open, high,
low and close per bucket of the requested timeframe. Each response has exactly one data key,
as alpaca-py requires. These routes are public, as Alpaca's crypto data is.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from starlette.responses import Response

from cnop.common.clock import isoformat
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.exceptions import ValidationFailed
from cnop.common.jsonio import dumps
from cnop.market.prices import Tick
from cnop.services.alpaca.schemas import text
from cnop.services.alpaca.views import find_asset
from cnop.services.dependencies import AppClock, AppSettings, Assets, Prices

router = APIRouter(prefix="/v1beta3/crypto/us")

MAX_SYMBOLS = 100
MAX_BARS = 10_000
DEFAULT_BARS = 1_000
_TIMEFRAME = re.compile(r"^(\d{1,2})(Min|T|Hour|H|Day|D|Week|W|Month|M)$")
_UNITS = {"T": "Min", "H": "Hour", "D": "Day", "W": "Week", "M": "Month"}
_LIMITS = {"Min": range(1, 60), "Hour": range(1, 24), "Day": range(1, 2), "Week": range(1, 2)}
_MONTHS = (1, 2, 3, 4, 6, 12)
_MONDAY_OFFSET = 4 * 86400  # 1970-01-01 was a Thursday
_SECONDS = {"Min": 60, "Hour": 3600, "Day": 86400, "Week": 7 * 86400}


def _json(payload: dict[str, Any]) -> Response:
    return Response(dumps(payload), media_type="application/json")


@dataclass(frozen=True, slots=True)
class Timeframe:
    amount: int
    unit: str  # Min, Hour, Day, Week, Month

    def bucket(self, moment: datetime) -> datetime:
        """The start of the bar that `moment` falls in."""
        if self.unit == "Month":
            index = (moment.year * 12 + moment.month - 1) // self.amount * self.amount
            return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
        width = self.amount * _SECONDS[self.unit]
        offset = _MONDAY_OFFSET if self.unit == "Week" else 0
        seconds = int(moment.timestamp()) - offset
        return datetime.fromtimestamp(seconds - seconds % width + offset, UTC)


def parse_timeframe(value: str) -> Timeframe:
    match = _TIMEFRAME.match(value)
    if match is None:
        raise ValidationFailed.field("timeframe", "must be like 1Min, 5Min, 1Hour, 1Day, 1Week or 1Month")
    amount, unit = int(match.group(1)), _UNITS.get(match.group(2), match.group(2))
    allowed = _MONTHS if unit == "Month" else _LIMITS[unit]
    if amount not in allowed:
        raise ValidationFailed.field("timeframe", f"{amount}{unit} is not offered")
    return Timeframe(amount, unit)


async def _assets(assets: AssetDAO, symbols: str) -> list[tuple[str, str]]:
    """(symbol as asked, asset id) for each known symbol; answers are keyed by the symbol as asked,
    and unknown symbols are left out, as Alpaca does."""
    names = [s for s in (part.strip() for part in symbols.split(",")) if s]
    if not names or len(names) > MAX_SYMBOLS:
        raise ValidationFailed.field("symbols", f"name 1 to {MAX_SYMBOLS} symbols, comma-separated")
    found: list[tuple[str, str]] = []
    for name in names:
        asset = await find_asset(assets, name)
        if asset is not None:
            found.append((name.upper(), asset.asset_id))
    return found


Symbols = Annotated[str, Query(min_length=1, max_length=4096)]


@router.get("/latest/quotes")
async def latest_quotes(assets: Assets, prices: Prices, settings: AppSettings, symbols: Symbols) -> Response:
    quotes: dict[str, Any] = {}
    for symbol, asset_id in await _assets(assets, symbols):
        tick = prices.current(asset_id)
        if tick is None:
            continue
        # Ask size: what the house can sell now; bid size: the most one order may sell by value.
        inventory = await assets.house_quantity(asset_id)
        bid_size = (settings.order_value_limit / tick.price).quantize(Decimal("1E-8"), ROUND_DOWN)
        price = text(tick.price)
        quotes[symbol] = {
            "t": isoformat(tick.at),
            "bp": price,
            "bs": text(bid_size),
            "ap": price,
            "as": text(inventory),
        }
    return _json({"quotes": quotes})


@router.get("/latest/trades")
async def latest_trades(assets: Assets, prices: Prices, symbols: Symbols) -> Response:
    trades: dict[str, Any] = {}
    for symbol, asset_id in await _assets(assets, symbols):
        tick = prices.current(asset_id)
        if tick is not None:
            trades[symbol] = {"t": isoformat(tick.at), "p": text(tick.price), "s": "0", "i": 0, "tks": "B"}
    return _json({"trades": trades})


def _bars(ticks: list[Tick], timeframe: Timeframe) -> list[dict[str, Any]]:
    """Open, high, low, close per bucket, oldest first."""
    bars: list[dict[str, Any]] = []
    current: datetime | None = None
    high = low = close = Decimal(0)
    for tick in ticks:
        start = timeframe.bucket(tick.at)
        if start != current:
            if current is not None:
                bars[-1].update(h=text(high), l=text(low), c=text(close))
            current, high, low = start, tick.price, tick.price
            bars.append({"t": isoformat(start), "o": text(tick.price), "v": "0", "n": 0, "vw": None})
        high, low, close = max(high, tick.price), min(low, tick.price), tick.price
    if bars:
        bars[-1].update(h=text(high), l=text(low), c=text(close))
    return [{key: bar[key] for key in ("t", "o", "h", "l", "c", "v", "n", "vw")} for bar in bars]


@router.get("/latest/bars")
async def latest_bars(assets: Assets, prices: Prices, symbols: Symbols) -> Response:
    minute = Timeframe(1, "Min")
    result: dict[str, Any] = {}
    for symbol, asset_id in await _assets(assets, symbols):
        tick = prices.current(asset_id)
        if tick is None:
            continue
        recent = prices.history(asset_id, since=minute.bucket(tick.at))
        bars = _bars(recent, minute)
        if bars:
            result[symbol] = bars[-1]
    return _json({"bars": result})


def _page_token(symbol: str, at: str) -> str:
    return base64.urlsafe_b64encode(f"{symbol}|{at}".encode()).decode().rstrip("=")


def _read_token(token: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        symbol, at = raw.split("|", 1)
    except ValueError as exc:
        raise ValidationFailed.field("page_token", "is not a token this service made") from exc
    return symbol, at


@router.get("/bars")
async def bars(
    assets: Assets,
    prices: Prices,
    clock: AppClock,
    symbols: Symbols,
    timeframe: Annotated[str, Query(max_length=16)] = "1Min",
    start: datetime | None = None,
    end: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_BARS)] = DEFAULT_BARS,
    sort: Literal["asc", "desc"] = "asc",
    page_token: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    frame = parse_timeframe(timeframe)
    now = clock.now()
    for name, moment in (("start", start), ("end", end)):
        if moment is not None and moment.tzinfo is None:
            raise ValidationFailed.field(name, "must carry a time zone (RFC 3339)")
    since = start or datetime(now.year, now.month, now.day, tzinfo=UTC)
    until = end or now
    resume: tuple[str, str] | None = _read_token(page_token) if page_token else None
    rows: list[tuple[str, dict[str, Any]]] = []
    for symbol, asset_id in await _assets(assets, symbols):
        ticks = [t for t in prices.history(asset_id, since=frame.bucket(since)) if t.at <= until]
        series = [bar for bar in _bars(ticks, frame) if bar["t"] >= isoformat(frame.bucket(since))]
        if sort == "desc":
            series.reverse()
        rows += [(symbol, bar) for bar in series]
    if resume is not None:
        keys = [(symbol, bar["t"]) for symbol, bar in rows]
        rows = rows[keys.index(resume) :] if resume in keys else []
    page, rest = rows[:limit], rows[limit:]
    grouped: dict[str, list[dict[str, Any]]] = {}
    for symbol, bar in page:
        grouped.setdefault(symbol, []).append(bar)
    token = _page_token(rest[0][0], rest[0][1]["t"]) if rest else None
    return _json({"bars": grouped, "next_page_token": token})
