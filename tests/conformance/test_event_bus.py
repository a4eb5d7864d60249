"""The event bus port's conformance suite: the in-process bus and the Redis bus pass it unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from cnop.common.clock import FakeClock
from cnop.common.config import Settings
from cnop.common.events import QUEUE_SIZE, Event, EventBus, InProcessEventBus, Listener
from cnop.common.jsonio import dumps, loads
from cnop.common.shared.redis import SharedRedis, open_redis
from cnop.common.shared.redis_events import RedisEventBus

DEADLINE_SECONDS = 10.0


@dataclass
class Bench:
    """A bus under test, how to build more of it, and the ids it calls "before everything" and "foreign"."""

    clock: FakeClock
    make: Callable[..., Awaitable[EventBus]]
    origin: str
    foreign: str


@pytest.fixture(params=["in-process", "redis"])
async def bench(request: pytest.FixtureRequest) -> AsyncIterator[Bench]:
    clock = FakeClock()
    opened: list[EventBus] = []
    shared: SharedRedis | None = None
    if request.param == "redis":
        settings = Settings(
            redis_url=request.getfixturevalue("redis_url"), redis_prefix=request.getfixturevalue("redis_prefix")
        )
        shared = open_redis(settings)

    async def make(**limits: Any) -> EventBus:
        bus: EventBus = InProcessEventBus(clock, **limits) if shared is None else RedisEventBus(shared, clock, **limits)
        opened.append(bus)
        return bus

    if shared is None:
        yield Bench(clock, make, origin="0", foreign="1733212345678-0")
    else:
        yield Bench(clock, make, origin="0-0", foreign="17")
    for bus in opened:
        await bus.close()
    if shared is not None:
        await shared.close()


async def next_events(listener: Listener, count: int) -> list[Event]:
    got: list[Event] = []
    async with asyncio.timeout(DEADLINE_SECONDS):
        while len(got) < count:
            item = await listener.queue.get()
            assert item is not None, "the feed was lost"
            got.append(item)
    return got


async def settled(bus: EventBus, username: str, origin: str, count: int) -> list[Event]:
    """`since(origin)` once it holds `count` events (the Redis bus publishes in the background)."""
    async with asyncio.timeout(DEADLINE_SECONDS):
        while True:
            events = await bus.since(username, origin)
            if len(events) >= count:
                return events
            await asyncio.sleep(0.02)


def order(n: int) -> dict[str, Any]:
    return {"order_id": f"o{n}", "n": n}


async def test_listeners_get_events_in_order_and_since_replays_after_an_id(bench: Bench) -> None:
    bus = await bench.make()
    listener = await bus.listen("ada")
    for n in range(5):
        bus.publish("ada", "order.queued" if n % 2 else "order.completed", order(n))
    got = await next_events(listener, 5)
    assert [e.data for e in got] == [order(n) for n in range(5)]
    assert [e.type for e in got] == ["order.completed", "order.queued"] * 2 + ["order.completed"]
    assert [e.position for e in got] == sorted({e.position for e in got})  # strictly increasing
    assert await bus.since("ada", got[1].id) == got[2:]
    assert await bus.since("ada", got[-1].id) == []
    assert await bus.since("ada", bench.origin) == got
    assert await bus.since("bob", bench.origin) == []
    bus.unlisten(listener)


async def test_each_user_hears_only_their_events_and_every_listener_hears_them(bench: Bench) -> None:
    bus = await bench.make()
    first, second, other = await bus.listen("ada"), await bus.listen("ada"), await bus.listen("bob")
    bus.publish("ada", "order.queued", order(1))
    bus.publish("bob", "order.queued", order(2))
    bus.publish("ada", "order.cancelled", order(3))
    assert [e.data for e in await next_events(first, 2)] == [order(1), order(3)]
    assert [e.data for e in await next_events(second, 2)] == [order(1), order(3)]
    assert [e.data for e in await next_events(other, 1)] == [order(2)]
    bus.unlisten(second)
    bus.publish("ada", "order.completed", order(4))
    assert [e.data for e in await next_events(first, 1)] == [order(4)]
    assert second.queue.empty()
    bus.unlisten(first)
    bus.unlisten(other)


async def test_a_listener_hears_only_what_is_published_after_it_listens(bench: Bench) -> None:
    bus = await bench.make()
    bus.publish("ada", "order.queued", order(1))
    await settled(bus, "ada", bench.origin, 1)
    listener = await bus.listen("ada")
    bus.publish("ada", "order.queued", order(2))
    assert [e.data for e in await next_events(listener, 1)] == [order(2)]
    bus.unlisten(listener)


async def test_retention_keeps_the_newest_events_up_to_the_count(bench: Bench) -> None:
    bus = await bench.make(retained_per_user=3)
    for n in range(7):
        bus.publish("ada", "order.queued", order(n))
    await settled(bus, "ada", bench.origin, 3)
    # Once the last one is in, the window is exactly the newest three.
    async with asyncio.timeout(DEADLINE_SECONDS):
        while (kept := await bus.since("ada", bench.origin))[-1].data != order(6):
            await asyncio.sleep(0.02)
    assert [e.data for e in kept] == [order(4), order(5), order(6)]
    assert [e.data for e in await bus.since("ada", kept[0].id)] == [order(5), order(6)]


async def test_retention_drops_events_older_than_the_age(bench: Bench) -> None:
    bus = await bench.make(retention_seconds=300.0)
    bus.publish("ada", "order.queued", order(1))
    (first,) = await settled(bus, "ada", bench.origin, 1)
    bench.clock.advance(200)
    bus.publish("ada", "order.completed", order(2))
    both = await settled(bus, "ada", bench.origin, 2)
    assert [e.data for e in both] == [order(1), order(2)]
    bench.clock.advance(150)  # the first is 350 s old, the second 150 s
    assert [e.data for e in await bus.since("ada", bench.origin)] == [order(2)]
    assert [e.data for e in await bus.since("ada", first.id)] == [order(2)]
    bench.clock.advance(200)
    assert await bus.since("ada", bench.origin) == []


async def test_an_id_in_another_format_replays_nothing(bench: Bench) -> None:
    bus = await bench.make()
    bus.publish("ada", "order.queued", order(1))
    await settled(bus, "ada", bench.origin, 1)
    for bad in (bench.foreign, "abc", "", "-1", "1.5", "9" * 30):
        assert await bus.since("ada", bad) == [], bad


async def test_a_slow_reader_loses_its_oldest_events_and_never_blocks_the_publisher(bench: Bench) -> None:
    bus = await bench.make(retained_per_user=1000)
    slow, fast = await bus.listen("ada"), await bus.listen("ada")
    total = QUEUE_SIZE + 40
    reading = asyncio.create_task(next_events(fast, total))  # `fast` keeps up, `slow` is never read
    for n in range(total):  # publishing returns at once, every time, whoever does not read
        bus.publish("ada", "order.queued", order(n))
        if n % 8 == 7:
            await asyncio.sleep(0)
    # Once `fast` has the last event, `slow` has been offered every one.
    got = await reading
    assert [e.data for e in got] == [order(n) for n in range(total)]
    assert slow.queue.qsize() == QUEUE_SIZE
    kept = [slow.queue.get_nowait() for _ in range(QUEUE_SIZE)]
    assert [e.data for e in kept if e is not None] == [order(n) for n in range(total - QUEUE_SIZE, total)]
    assert len(await bus.since("ada", bench.origin)) == total  # the retained history is whole
    bus.unlisten(slow)
    bus.unlisten(fast)


async def test_data_is_published_in_its_wire_form_without_the_username(bench: Bench) -> None:
    from decimal import Decimal

    bus = await bench.make()
    listener = await bus.listen("ada")
    bus.publish("ada", "order.completed", {"username": "ada", "order_id": "o1", "price": Decimal("50000.5")})
    (event,) = await next_events(listener, 1)
    assert loads(dumps(event.data)) == {"order_id": "o1", "price": "50000.5"}
    (kept,) = await bus.since("ada", bench.origin)
    assert loads(dumps(kept.data)) == {"order_id": "o1", "price": "50000.5"}
    bus.unlisten(listener)
