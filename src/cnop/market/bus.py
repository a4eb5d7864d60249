"""The price bus: how published ticks reach the price book of every process.

One port, two implementations, chosen once in the composition root by `CNOP_REDIS_URL`:

- `LocalPriceBus` (no Redis, one process): `publish` applies the batch to the book at once.
- `RedisPriceBus` (every process shares one Redis): `publish` appends the batch to one Redis
  stream with a Lua script; every process (the publisher too) applies the stream's entries to
  its own book in stream order (`run`, an XREAD loop), so every process quotes the same price,
  stamped with the publisher's time (staleness is judged on that shared time).

The Lua script does, atomically with the XADD: the fencing check (a publisher that holds the
price lease passes the lease's value, and the script refuses the batch unless the lease still
has exactly that value: a deposed or stalled publisher can never publish again), the book's own
ordering rule (a tick older than the asset's latest shared tick is dropped), the latest price per
asset (`prices:latest`, a hash), and the downsampled history (`prices:history:60` and
`prices:history:3600`, hashes of ring slots `ASSET:SLOT` holding the bucket's last tick, high
and low). A process that starts (or reconnects) reads the latest prices, the history and the
stream's last id in one MULTI, so it starts from exactly the state the stream continues.

Memory stays bounded: the stream is trimmed to about `price_stream_maxlen` entries, `latest`
has one field per asset, and each history hash one field per asset and ring slot (1440 minutes,
720 hours), overwritten when its time comes round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from redis.exceptions import RedisError

from cnop.common.clock import Clock
from cnop.common.shared.redis import SharedRedis
from cnop.market.catalogue import CatalogueAsset
from cnop.market.history import HOURS, MINUTES
from cnop.market.prices import MAX_MARKET_PRICE, MIN_MARKET_PRICE, PriceBook, PricePoint, Tick

log = logging.getLogger(__name__)

DEFAULT_STREAM_MAXLEN = 10_000
#: How long `publish` waits for its own batch to reach this process's book (read-your-write).
LOCAL_APPLY_WAIT_SECONDS = 2.0


class PriceBus(Protocol):
    """Where published ticks go; every process's book follows it."""

    @property
    def name(self) -> str:
        """`local` or `redis` (logs, health)."""
        ...

    async def publish(self, batch: Sequence[Tick], *, fence: str | None = None) -> bool:
        """Publish a batch; False only when `fence` is given and no longer holds (deposed).

        Returns once this process's own book has the batch (or a short wait has passed), so an
        admin who sets a price reads it back on the same process.
        """
        ...

    async def start(self) -> None:
        """Load the shared state into the book (at start-up, before serving)."""
        ...

    async def run(self) -> None:
        """Keep the book following the bus until cancelled."""
        ...


class LocalPriceBus:
    """The one-process bus: the book is the bus."""

    name = "local"

    def __init__(self, book: PriceBook) -> None:
        self.book = book

    async def publish(self, batch: Sequence[Tick], *, fence: str | None = None) -> bool:
        self.book.apply(batch)
        return True

    async def start(self) -> None:
        return None

    async def run(self) -> None:
        return None


# KEYS: 1 stream, 2 latest, 3 lease, 4 minute history, 5 hour history, 6 first tick per asset
# ARGV: 1 fence ('' for none), 2 mode ('tick' or 'seed': only assets without a price), 3 maxlen,
#       then (asset, price, at in epoch microseconds) for each tick.
PUBLISH_SCRIPT = f"""
if ARGV[1] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return false
end
local tiers = {{{{KEYS[4], {MINUTES.seconds * 1_000_000}, {MINUTES.slots}}},
               {{KEYS[5], {HOURS.seconds * 1_000_000}, {HOURS.slots}}}}}
local parts = {{}}
for i = 4, #ARGV, 3 do
  local asset, price, at = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local at_n = tonumber(at)
  local prev = redis.call('HGET', KEYS[2], asset)
  local take
  if ARGV[2] == 'seed' then
    take = not prev
  elseif prev then
    take = at_n >= tonumber(string.match(prev, '|(%d+)$'))
  else
    take = true
  end
  if take then
    redis.call('HSET', KEYS[2], asset, price .. '|' .. at)
    redis.call('HSETNX', KEYS[6], asset, price .. '|' .. at)
    local p = tonumber(price)
    for _, tier in ipairs(tiers) do
      local bucket = math.floor(at_n / tier[2])
      local field = asset .. ':' .. string.format('%d', bucket % tier[3])
      local old = redis.call('HGET', tier[1], field)
      local high, low = price, price
      if old then
        local b, _, _, h, l = string.match(old, '^(%d+)|(%d+)|([^|]+)|([^|]+)|([^|]+)$')
        if b and tonumber(b) == bucket then
          if tonumber(h) > p then high = h end
          if tonumber(l) < p then low = l end
        end
      end
      redis.call('HSET', tier[1], field,
        string.format('%d', bucket) .. '|' .. at .. '|' .. price .. '|' .. high .. '|' .. low)
    end
    parts[#parts + 1] = asset .. '|' .. price .. '|' .. at
  end
end
if #parts == 0 then
  return ''
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 't', table.concat(parts, ';'), 'f', ARGV[1])
"""


def _micros(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _moment(micros: int) -> datetime:
    seconds, rest = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest)


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def encode_tick(tick: Tick) -> tuple[str, str, str]:
    return tick.asset_id, format(tick.price, "f"), str(_micros(tick.at))


def decode_ticks(text: str) -> list[Tick]:
    """The ticks of one stream entry (`ASSET|PRICE|MICROS;...`); malformed parts are skipped."""
    ticks = []
    for part in text.split(";"):
        try:
            asset_id, price, micros = part.split("|")
            ticks.append(Tick(asset_id, Decimal(price), _moment(int(micros))))
        except (ValueError, InvalidOperation, OverflowError):
            log.warning("price bus: ignored a malformed tick %.80r", part)
    return ticks


def decode_point(asset_id: str, resolution: int, value: str) -> PricePoint | None:
    try:
        bucket, micros, last, high, low = value.split("|")
        return PricePoint(
            resolution, int(bucket), Tick(asset_id, Decimal(last), _moment(int(micros))), Decimal(high), Decimal(low)
        )
    except (ValueError, InvalidOperation, OverflowError):
        return None


def _valid(tick: Tick) -> bool:
    return tick.price.is_finite() and MIN_MARKET_PRICE <= tick.price <= MAX_MARKET_PRICE


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class RedisPriceBus:
    """The shared bus (see the module): a Redis stream every process's book follows."""

    name = "redis"

    def __init__(
        self,
        shared: SharedRedis,
        book: PriceBook,
        clock: Clock,
        *,
        catalogue: Iterable[CatalogueAsset] = (),
        lease_name: str = "prices",
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        block_seconds: float = 1.0,
        retry_max_seconds: float = 5.0,
    ) -> None:
        self.shared = shared
        self.book = book
        self.clock = clock
        self.catalogue = list(catalogue)
        self.stream_key = shared.key("prices", "stream")
        self.latest_key = shared.key("prices", "latest")
        self.first_key = shared.key("prices", "first")
        self.lease_key = shared.key("lease", lease_name)
        self.history_keys = {
            MINUTES.seconds: shared.key("prices", "history", str(MINUTES.seconds)),
            HOURS.seconds: shared.key("prices", "history", str(HOURS.seconds)),
        }
        self.stream_maxlen = stream_maxlen
        self.block_ms = max(10, round(block_seconds * 1000))
        self.retry_max_seconds = retry_max_seconds
        self._publish = shared.client.register_script(PUBLISH_SCRIPT)
        self.last_id = "0-0"
        self.entries_applied = 0
        self.published = 0
        self.refused = 0
        self.following = False
        self.connected = False
        self.loaded = False
        self._applied = asyncio.Condition()

    # --- publishing ---------------------------------------------------------------------------

    async def publish(self, batch: Sequence[Tick], *, fence: str | None = None) -> bool:
        return await self._send(batch, fence=fence, mode="tick")

    async def seed(self) -> None:
        """Give every catalogue asset without a shared price its snapshot price, stamped now."""
        now = self.clock.now()
        await self._send([Tick(a.asset_id, a.price_usd, now) for a in self.catalogue], fence=None, mode="seed")

    async def _send(self, batch: Sequence[Tick], *, fence: str | None, mode: str) -> bool:
        ticks = [tick for tick in batch if _valid(tick)]
        if len(ticks) < len(batch):
            log.warning("price bus: dropped %d ticks with an invalid price", len(batch) - len(ticks))
        if not ticks:
            return True
        args: list[str | int] = [fence or "", mode, self.stream_maxlen]
        for tick in ticks:
            args.extend(encode_tick(tick))
        keys = [self.stream_key, self.latest_key, self.lease_key, *self.history_keys.values(), self.first_key]
        entry_id = await self._publish(keys=keys, args=args)
        if entry_id is None:
            self.refused += 1
            return False
        self.published += 1
        if entry_id and self.following:
            await self._wait_applied(str(entry_id))
        return True

    async def _wait_applied(self, entry_id: str) -> None:
        target = _stream_id(entry_id)
        try:
            async with asyncio.timeout(LOCAL_APPLY_WAIT_SECONDS), self._applied:
                await self._applied.wait_for(lambda: _stream_id(self.last_id) >= target)
        except TimeoutError:
            log.warning("price bus: entry %s not applied locally within %.1f s", entry_id, LOCAL_APPLY_WAIT_SECONDS)

    # --- following ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Seed the shared prices if there are none, then load them and the history (see module)."""
        await self.seed()
        await self.load(history=True)

    async def load(self, *, history: bool) -> None:
        """Apply the shared latest prices (and, at start-up, the history) and move to the stream's end."""
        client = self.shared.client
        async with client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.latest_key)
            pipe.xrevrange(self.stream_key, count=1)
            if history:
                pipe.hgetall(self.first_key)
                for key in self.history_keys.values():
                    pipe.hgetall(key)
            replies = await pipe.execute()
        latest: dict[str, str] = replies[0]
        last_entry = replies[1]
        ticks = []
        for asset_id, value in latest.items():
            ticks.extend(decode_ticks(f"{asset_id}|{value}"))
        if history:  # at start-up the shared prices and history replace this process's own seed
            self.book.forget(t.asset_id for t in ticks)
        self.book.apply(ticks)
        if history:
            since = self.clock.now() - HOURS.span
            firsts = {t.asset_id: t for a, v in replies[2].items() for t in decode_ticks(f"{a}|{v}")}
            by_asset: dict[str, list[PricePoint]] = {}
            for resolution, points in zip(self.history_keys, replies[3:], strict=True):
                for field, value in points.items():
                    asset_id = field.rpartition(":")[0]
                    point = decode_point(asset_id, resolution, value)
                    if point is not None and point.last.at >= since:
                        by_asset.setdefault(asset_id, []).append(point)
            restored = sum(self.book.restore_points(a, points, first=firsts.get(a)) for a, points in by_asset.items())
            log.info("price bus: loaded %d prices and %d history points", len(ticks), restored)
            self.loaded = True
        await self._advance(last_entry[0][0] if last_entry else "0-0")

    async def _advance(self, entry_id: str) -> None:
        self.last_id = max(self.last_id, entry_id, key=_stream_id)
        async with self._applied:
            self._applied.notify_all()

    async def run(self) -> None:
        """XREAD the stream into the book until cancelled; after an outage, reload and go on."""
        failures = 0
        self.following = True
        try:
            while True:
                try:
                    if not self.loaded:  # the roles skip the start-up hooks: load here
                        await self.start()
                    elif failures:
                        await self._resync()
                        log.info("price bus: following the price stream again after %d failures", failures)
                        failures = 0
                    self.connected = True
                    await self._read_once()
                except (RedisError, OSError) as exc:
                    self.connected = False
                    failures += 1
                    delay = min(self.retry_max_seconds, 0.2 * 2 ** min(failures, 6))
                    if failures == 1:
                        log.warning("price bus: lost the price stream (%s); retrying", exc)
                    await asyncio.sleep(delay)
        finally:
            self.following = False
            self.connected = False

    async def _resync(self) -> None:
        """After an outage: go on from where we were if the stream still has it, else reload."""
        first: Any = await self.shared.client.xrange(self.stream_key, count=1)
        if not first or _stream_id(str(first[0][0])) > _stream_id(self.last_id):
            # Entries we never read were trimmed (or Redis lost the stream): take the latest prices.
            await self.load(history=False)

    async def _read_once(self) -> None:
        read = asyncio.ensure_future(
            self.shared.client.xread({self.stream_key: self.last_id}, count=500, block=self.block_ms)
        )
        read.add_done_callback(_retrieve)
        # A cancelled blocking XREAD can leave the client waiting on its connection for good; let
        # the read end by itself (within `block_ms`) and stop waiting for it instead.
        reply: Any = await asyncio.shield(read)
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                batch = decode_ticks(fields.get("t", ""))
                if batch:
                    self.book.apply(batch)
                self.entries_applied += 1
                self.last_id = entry_id
        if reply:
            async with self._applied:
                self._applied.notify_all()
