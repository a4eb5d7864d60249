"""Splitting per-asset work between the processes of a fleet: shard leases in Redis.

Each asset belongs to one of `SHARDS` shards (a stable CRC32 of its id). With Redis, every trigger
engine registers itself in `{prefix}engines` (a sorted set scored by heartbeat time; silent
members drop out after the TTL), counts the live members `n`, and holds about `ceil(SHARDS / n)`
shard leases (`FencedLease("shard-K")`): it renews the ones it has, releases extras when a member
joins, and takes free ones when it has too few (a dead member's shards are free once their TTL
runs out). `owns(asset_id)` is what the engine consults per tick, so each asset's ticks are
handled by one engine at a time, in stream order. Whenever shards are gained, `on_gain` is called
with them, so the engine can look at the current prices of their assets (a takeover catches up
with a crossing the previous holder never finished). An overlap during a handover is harmless:
every fill is conditional on the order still being queued.

Without Redis, `AllAssets` owns everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from collections.abc import Callable

from redis.exceptions import RedisError

from cnop.common.shared.lease import FencedLease
from cnop.common.shared.redis import SharedRedis

log = logging.getLogger(__name__)

SHARDS = 16


def shard_of(asset_id: str, shards: int = SHARDS) -> int:
    return zlib.crc32(asset_id.encode()) % shards


class AllAssets:
    """One process does all the work."""

    def owns(self, asset_id: str) -> bool:
        return True


class AssetShards:
    def __init__(self, shared: SharedRedis, holder: str, ttl_seconds: float, *, shards: int = SHARDS) -> None:
        self.shared = shared
        self.holder = holder
        self.ttl_seconds = ttl_seconds
        self.shards = shards
        self.members_key = shared.key("engines")
        self.leases = [FencedLease(shared, f"shard-{k}", holder, ttl_seconds) for k in range(shards)]
        self.on_gain: Callable[[set[int]], object] | None = None
        # Where this member starts looking for free shards, so members do not all race for shard 0.
        self._offset = zlib.crc32(holder.encode()) % shards

    def owns(self, asset_id: str) -> bool:
        return self.leases[shard_of(asset_id, self.shards)].held

    @property
    def owned(self) -> set[int]:
        return {k for k, lease in enumerate(self.leases) if lease.held}

    async def members(self) -> int:
        now_ms = int(time.time() * 1000)
        client = self.shared.client
        async with client.pipeline(transaction=True) as pipe:
            pipe.zadd(self.members_key, {self.holder: now_ms})
            pipe.zremrangebyscore(self.members_key, 0, now_ms - int(self.ttl_seconds * 1000))
            pipe.zcard(self.members_key)
            replies = await pipe.execute()
        return max(1, int(replies[2]))

    async def balance(self) -> set[int]:
        """One round: heartbeat, renew, give back extras, take free shards; the shards gained."""
        target = math.ceil(self.shards / await self.members())
        before = self.owned
        for k in sorted(before):
            await self.leases[k].renew()
        mine = sorted(self.owned)
        for k in mine[target:]:
            await self.leases[k].release()
        for step in range(self.shards):
            if len(self.owned) >= target:
                break
            k = (self._offset + step) % self.shards
            if not self.leases[k].held:
                await self.leases[k].acquire()
        gained = self.owned - before
        if gained:
            log.info("trigger shards: now own %s (gained %s)", sorted(self.owned), sorted(gained))
            if self.on_gain is not None:
                self.on_gain(gained)
        return gained

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.balance()
                except (RedisError, OSError) as exc:
                    log.warning("trigger shards: cannot reach Redis (%s)", exc)
                await asyncio.sleep(self.ttl_seconds / 3)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._leave())

    async def _leave(self) -> None:
        for k in sorted(self.owned):
            await self.leases[k].release()
        await self.shared.client.zrem(self.members_key, self.holder)
