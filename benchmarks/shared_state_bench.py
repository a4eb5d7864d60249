"""Shared state costs: a rate-limit hit in process vs in Redis, and cache-invalidation propagation.

Against a real `redis-server` started on a free 127.0.0.1 port (`tests.support.redis_server`):

- `limit_hit_ms`: one rate-limit window hit as the middleware does it (increment + expiry read)
  on `MemoryCounters` and on the Redis counters (`FallbackCounters` over `limits`), p50/p99;
- `invalidation_ms`: from `publish` in one "process" (its own client and pool) to the handler
  running in another (its own client, pub/sub listener), p50/p99 — what "every process drops
  the entry within one second" costs in practice.

    .venv/bin/python -m benchmarks.shared_state_bench
    BENCH_SHARED_ROUNDS=5000 .venv/bin/python -m benchmarks.shared_state_bench

Writes benchmarks/results/shared_state.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from tests.support.redis_server import RedisServer

from cnop.common.config import Settings
from cnop.common.counters import CounterStore, MemoryCounters, counter_store
from cnop.common.shared.invalidation import RedisInvalidations
from cnop.common.shared.redis import open_redis

ROUNDS = int(os.environ.get("BENCH_SHARED_ROUNDS", "2000"))
RESULTS = Path(__file__).parent / "results" / "shared_state.json"


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered), 4),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 4),
        "max": round(ordered[-1], 4),
        "n": len(ordered),
    }


async def limit_hits(counters: CounterStore, rounds: int) -> list[float]:
    samples = []
    for n in range(rounds):
        key = f"LIMITS/user/bench{n % 100}/300/1/minute"
        started = time.perf_counter()
        await counters.incr(key, 60)
        await counters.get_expiry(key)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def invalidations(settings: Settings, rounds: int) -> list[float]:
    publisher_redis, listener_redis = open_redis(settings), open_redis(settings)
    assert publisher_redis is not None
    assert listener_redis is not None
    publisher, listener = RedisInvalidations(publisher_redis), RedisInvalidations(listener_redis)
    arrived: dict[str, float] = {}
    event = asyncio.Event()

    def handler(key: str) -> None:
        arrived[key] = time.perf_counter()
        event.set()

    listener.subscribe("asset", handler)
    tasks = [asyncio.create_task(channel.run()) for channel in (publisher, listener)]
    try:
        await asyncio.wait_for(listener.wait_connected(), 10)
        samples = []
        for n in range(rounds):
            event.clear()
            started = time.perf_counter()
            await publisher.publish("asset", f"A{n}")
            await asyncio.wait_for(event.wait(), 10)
            samples.append((arrived[f"A{n}"] - started) * 1000)
        return samples
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await publisher_redis.close()
        await listener_redis.close()


async def main() -> dict[str, Any]:
    with RedisServer.start() as redis:
        settings = Settings(_env_file=None, redis_url=redis.url, redis_prefix="bench:")
        shared = counter_store(settings)
        await limit_hits(shared, 200)  # warm the pool and the script cache
        result = {
            "rounds": ROUNDS,
            "limit_hit_ms": {
                "memory": summary(await limit_hits(MemoryCounters(), ROUNDS)),
                "redis": summary(await limit_hits(shared, ROUNDS)),
            },
            "invalidation_ms": summary(await invalidations(settings, max(100, ROUNDS // 4))),
            "redis_server": "Debian redis-server on 127.0.0.1, same machine",
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), indent=2))
