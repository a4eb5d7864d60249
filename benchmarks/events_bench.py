"""Order events through Redis: one reader per process (the design) vs one blocking read per stream.

Decision 0020 chose one `XREAD BLOCK` task per process that multiplexes the streams of every
user with an open event stream there, over reading each open stream with its own blocking
`XREAD` (one Redis connection each). This measures both on this machine, against a local
redis-server it starts (127.0.0.1, nothing on disk, stopped after):

- publish-to-listener delay, p50 and p99 (one publisher, events spread over the users), and
- what each costs Redis: its connected clients while the streams are open, and the failed reads
  (a blocking read per stream opens that many connections at once).

    .venv/bin/python -m benchmarks.events_bench
    BENCH_EVENTS_USERS=10,200,1000 BENCH_EVENTS=3000 BENCH_EVENTS_RATE=1000 .venv/bin/python -m benchmarks.events_bench

Writes benchmarks/results/events.json. Numbers move with the machine; compare within one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from cnop.common.clock import SystemClock
from cnop.common.config import Settings
from cnop.common.events import Listener
from cnop.common.shared.redis import SharedRedis, open_redis
from cnop.common.shared.redis_events import RedisEventBus
from cnop.dev import start_redis

RESULTS = Path(__file__).parent / "results" / "events.json"
RATE_PER_SECOND = float(os.environ.get("BENCH_EVENTS_RATE", "1000"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentiles(delays: list[float]) -> dict[str, float]:
    ordered = sorted(delays)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "events": len(ordered),
    }


async def _publish(bus: RedisEventBus, users: list[str], count: int) -> None:
    for n in range(count):
        bus.publish(users[n % len(users)], "order.completed", {"n": n, "sent": time.time()})
        if n % 20 == 19:
            await asyncio.sleep(20 / RATE_PER_SECOND)


async def _clients(redis: Redis) -> int:
    return int((await redis.info("clients"))["connected_clients"])


async def hub(url: str, users: list[str], count: int) -> dict[str, Any]:
    """The design: one reader per process fanning out to the local listeners."""
    prefix = f"hub{time.monotonic_ns()}:"
    settings = Settings(redis_url=url, redis_prefix=prefix)
    clock = SystemClock()
    publisher_redis, reader_redis = open_redis(settings), open_redis(settings)
    assert publisher_redis is not None
    assert reader_redis is not None
    publisher, reader = RedisEventBus(publisher_redis, clock), RedisEventBus(reader_redis, clock)
    listeners = [await reader.listen(user) for user in users]
    delays: list[float] = []

    async def drain(listener: Listener) -> None:
        while True:
            event = await listener.queue.get()
            if event is not None:
                delays.append(time.time() - float(event.data["sent"]))

    drains = [asyncio.create_task(drain(listener)) for listener in listeners]
    await asyncio.sleep(0.5)
    clients = await _clients(publisher_redis.client)
    await _publish(publisher, users, count)
    await _settle(delays, count)
    for task in drains:
        task.cancel()
    await asyncio.gather(*drains, return_exceptions=True)
    for listener in listeners:
        reader.unlisten(listener)
    for bus in (publisher, reader):
        await bus.close()
    for shared in (publisher_redis, reader_redis):
        await shared.close()
    return {**_percentiles(delays), "redis_clients": clients}


async def per_stream(url: str, users: list[str], count: int) -> dict[str, Any]:
    """The alternative: each open stream blocks in its own XREAD, on its own connection."""
    prefix = f"each{time.monotonic_ns()}:"
    settings = Settings(redis_url=url, redis_prefix=prefix)
    clock = SystemClock()
    publisher_redis = open_redis(settings)
    assert publisher_redis is not None
    publisher = RedisEventBus(publisher_redis, clock)
    readers = Redis.from_url(url, decode_responses=True, max_connections=len(users) + 8)
    shared = SharedRedis(readers, prefix, url)
    delays: list[float] = []
    errors = 0

    async def read(user: str) -> None:
        nonlocal errors
        key, last = shared.key("events", user), "0-0"  # (the keys are new: every event counts)
        while True:
            try:
                reply = await readers.xread({key: last}, count=100, block=1000)
            except Exception:  # counted: a connection per stream is what fails first
                errors += 1
                await asyncio.sleep(0.1)
                continue
            for _key, entries in reply or ():
                for stream_id, fields in entries:
                    last = stream_id
                    delays.append(time.time() - json.loads(fields["data"])["sent"])

    tasks = [asyncio.create_task(read(user)) for user in users]
    await asyncio.sleep(1.0)
    clients = await _clients(publisher_redis.client)
    await _publish(publisher, users, count)
    await _settle(delays, count)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await publisher.close()
    await publisher_redis.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(readers.aclose(), 10)
    return {**_percentiles(delays), "redis_clients": clients, "read_errors": errors}


async def _settle(delays: list[float], count: int) -> None:
    deadline = time.monotonic() + 30
    while len(delays) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def main() -> None:
    users_counts = [int(n) for n in os.environ.get("BENCH_EVENTS_USERS", "10,200,1000").split(",")]
    count = int(os.environ.get("BENCH_EVENTS", "3000"))
    with tempfile.TemporaryDirectory() as folder:
        server = start_redis(free_port(), Path(folder) / "redis.log")
        try:
            results: dict[str, Any] = {"events": count, "rate_per_second": RATE_PER_SECOND, "runs": []}
            for n in users_counts:
                users = [f"user{i:05d}" for i in range(n)]
                run = {"users": n, "hub": await hub(server.url, users, count)}
                run["per_stream"] = await per_stream(server.url, users, count)
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
        finally:
            server.stop()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
