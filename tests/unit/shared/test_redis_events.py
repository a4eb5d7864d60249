"""The Redis event bus beyond the port's conformance suite: its keys, bounds and failure handling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cnop.common.clock import FakeClock
from cnop.common.config import Settings
from cnop.common.events import EventsUnavailable
from cnop.common.metrics import Metrics
from cnop.common.shared.redis import SharedRedis, open_redis
from cnop.common.shared.redis_events import RETENTION_SECONDS, TTL_MARGIN_SECONDS, RedisEventBus
from tests.support.redis_server import RedisServer

DEADLINE = 10.0


@pytest.fixture
async def shared(redis_url: str, redis_prefix: str) -> AsyncIterator[SharedRedis]:
    opened = open_redis(Settings(redis_url=redis_url, redis_prefix=redis_prefix))
    assert opened is not None
    yield opened
    await opened.close()


async def _until_kept(bus: RedisEventBus, username: str, count: int) -> None:
    async with asyncio.timeout(DEADLINE):
        while len(await bus.since(username, "0-0")) < count:
            await asyncio.sleep(0.02)


async def test_a_users_stream_lives_under_the_prefix_bounded_and_with_a_ttl(shared: SharedRedis) -> None:
    bus = RedisEventBus(shared, FakeClock(), retained_per_user=3)
    for n in range(250):
        bus.publish("ada", "order.queued", {"n": n})
    async with asyncio.timeout(DEADLINE):
        while not (kept := await bus.since("ada", "0-0")) or kept[-1].data != {"n": 249}:
            await asyncio.sleep(0.02)
    key = shared.key("events", "ada")
    assert key == f"{shared.prefix}events:ada"
    assert await shared.client.keys(f"{shared.prefix}*") == [key]
    # MAXLEN ~ trims whole nodes (100 entries), so Redis keeps a little more than 3, never all.
    assert 3 <= await shared.client.xlen(key) < 250
    assert [e.data for e in kept] == [{"n": 247}, {"n": 248}, {"n": 249}]
    ttl = await shared.client.pttl(key)
    assert 0 < ttl <= (RETENTION_SECONDS + TTL_MARGIN_SECONDS) * 1000
    await bus.close()


async def test_an_entry_the_bus_did_not_write_is_skipped_not_fatal(shared: SharedRedis) -> None:
    bus = RedisEventBus(shared, FakeClock())
    listener = await bus.listen("ada")
    await shared.client.xadd(shared.key("events", "ada"), {"junk": "1"})
    bus.publish("ada", "order.queued", {"n": 1})
    async with asyncio.timeout(DEADLINE):
        event = await listener.queue.get()
    assert event is not None and event.data == {"n": 1}
    assert [e.data for e in await bus.since("ada", "0-0")] == [{"n": 1}]
    bus.unlisten(listener)
    await bus.close()


async def test_with_redis_down_publish_never_raises_reads_say_unavailable_and_all_resumes(
    restartable_redis: RedisServer, redis_prefix: str
) -> None:
    shared = open_redis(Settings(redis_url=restartable_redis.url, redis_prefix=redis_prefix))
    assert shared is not None
    metrics = Metrics()
    bus = RedisEventBus(shared, FakeClock(), metrics=metrics)
    listener = await bus.listen("ada")
    restartable_redis.stop()
    # The open listener is told (its stream ends with a retry hint).
    async with asyncio.timeout(DEADLINE):
        assert await listener.queue.get() is None
    bus.unlisten(listener)
    for n in range(3):
        bus.publish("ada", "order.completed", {"n": n})  # returns; the trade it reports stands
    with pytest.raises(EventsUnavailable):
        await bus.since("ada", "0-0")
    with pytest.raises(EventsUnavailable):
        await bus.listen("ada")
    async with asyncio.timeout(DEADLINE):
        while bus.counters.publish_failures == 0:
            await asyncio.sleep(0.05)
    assert bus.counters.dropped == 0
    retries = metrics.registry.get_sample_value("cnop_event_bus_problems_total", {"kind": "publish_retry"})
    assert retries is not None and retries >= 1
    restartable_redis.restart()
    # Back: the held events are written in order, and reading works again, without a restart.
    await _until_kept(bus, "ada", 3)
    assert [e.data for e in await bus.since("ada", "0-0")] == [{"n": 0}, {"n": 1}, {"n": 2}]
    again = await bus.listen("ada")
    bus.publish("ada", "order.queued", {"n": 3})
    async with asyncio.timeout(DEADLINE):
        event = await again.queue.get()
    assert event is not None and event.data == {"n": 3}
    bus.unlisten(again)
    await bus.close()
    await shared.close()


async def test_a_full_outbox_drops_its_oldest_and_counts_them(shared: SharedRedis) -> None:
    bus = RedisEventBus(shared, FakeClock(), outbox_size=5)
    for n in range(8):  # all in one go: the sender has not run yet
        bus.publish("ada", "order.queued", {"n": n})
    await _until_kept(bus, "ada", 5)
    assert [e.data for e in await bus.since("ada", "0-0")] == [{"n": n} for n in range(3, 8)]
    assert bus.counters.dropped == 3
    await bus.close()
