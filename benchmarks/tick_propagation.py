"""Tick propagation through the shared price stream: publisher -> every follower's price book.

One publisher holds the price lease and publishes batches (every catalogue asset, like the
simulated source) through `RedisPriceBus.publish` with its fence; N followers, each with its own
Redis connection pool and price book as a separate process would have, run their XREAD loop. The
delay of a batch at a follower is the time from the tick's stamp (taken just before publishing)
to the moment the follower's book hands it to a subscriber. Against a local redis-server it
starts (127.0.0.1, nothing on disk, stopped after). The followers share one event loop here, so
the figures include that loop's scheduling: an upper bound for separate processes.

    .venv/bin/python -m benchmarks.tick_propagation
    BENCH_TICK_FOLLOWERS=1,4,8 BENCH_TICK_BATCHES=400 BENCH_TICK_RATE=20 .venv/bin/python -m benchmarks.tick_propagation

Writes benchmarks/results/tick_propagation.json. Numbers move with the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cnop.common.clock import SystemClock
from cnop.common.config import Settings
from cnop.common.shared.lease import FencedLease
from cnop.common.shared.redis import SharedRedis, open_redis
from cnop.dev import start_redis
from cnop.market.bus import RedisPriceBus
from cnop.market.catalogue import load_catalogue
from cnop.market.prices import PriceBook, Tick

RESULTS = Path(__file__).parent / "results" / "tick_propagation.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _shared(url: str, prefix: str) -> SharedRedis:
    shared = open_redis(Settings(redis_url=url, redis_prefix=prefix))
    assert shared is not None
    return shared


def _percentiles(delays: list[float]) -> dict[str, float]:
    ordered = sorted(delays)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "samples": len(ordered),
    }


async def run(url: str, followers: int, batches: int, rate: float) -> dict[str, Any]:
    prefix = f"bench{followers}:"
    clock = SystemClock()
    catalogue = load_catalogue()
    publisher_redis = _shared(url, prefix)
    publisher = RedisPriceBus(publisher_redis, PriceBook(clock), clock, catalogue=catalogue)
    lease = FencedLease(publisher_redis, "prices", "bench-publisher", 30.0)
    assert await lease.acquire() is not None
    buses = [
        RedisPriceBus(_shared(url, prefix), PriceBook(clock), clock, catalogue=catalogue) for _ in range(followers)
    ]
    delays: list[float] = []
    per_follower = [0] * followers

    async def watch(index: int, bus: RedisPriceBus) -> None:
        queue = bus.book.subscribe(maxsize=10_000)
        while True:
            batch = await queue.get()
            now = datetime.now(UTC)
            delays.append((now - batch[0].at).total_seconds())
            per_follower[index] += 1

    for bus in buses:
        await bus.start()
    tasks = [asyncio.create_task(bus.run()) for bus in buses]
    tasks += [asyncio.create_task(watch(i, bus)) for i, bus in enumerate(buses)]
    await asyncio.sleep(0.5)
    interval = 1.0 / rate
    started = time.monotonic()
    for n in range(batches):
        now = datetime.now(UTC)
        batch = [Tick(asset.asset_id, asset.price_usd, now) for asset in catalogue]
        assert await publisher.publish(batch, fence=lease.fence)
        await asyncio.sleep(max(0.0, started + (n + 1) * interval - time.monotonic()))
    deadline = time.monotonic() + 30
    while min(per_follower) < batches and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1.2)  # let the followers' last blocking reads end (block time 1 s)
    for bus in buses:
        await bus.shared.close()
    await publisher_redis.client.flushdb()
    await publisher_redis.close()
    return {
        "followers": followers,
        "batches": batches,
        "assets_per_batch": len(catalogue),
        "rate_per_second": rate,
        "complete": min(per_follower) == batches,
        **_percentiles(delays),
    }


async def main() -> None:
    counts = [int(n) for n in os.environ.get("BENCH_TICK_FOLLOWERS", "1,4,8").split(",")]
    batches = int(os.environ.get("BENCH_TICK_BATCHES", "400"))
    rate = float(os.environ.get("BENCH_TICK_RATE", "20"))
    results: dict[str, Any] = {"runs": []}
    with tempfile.TemporaryDirectory() as folder:
        server = start_redis(free_port(), Path(folder) / "redis.log")
        try:
            for followers in counts:
                result = await run(server.url, followers, batches, rate)
                results["runs"].append(result)
                print(json.dumps(result), flush=True)
        finally:
            server.stop()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
