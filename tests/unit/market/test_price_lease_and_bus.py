"""The price lease (fencing, takeover) and the price bus (in-process and Redis, same order)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from cnop.common.clock import FakeClock
from cnop.common.config import Settings
from cnop.common.shared.lease import FencedLease
from cnop.common.shared.redis import SharedRedis, open_redis
from cnop.common.shared.shards import SHARDS, AssetShards
from cnop.container import build_container
from cnop.market.bus import LocalPriceBus, RedisPriceBus
from cnop.market.catalogue import load_catalogue
from cnop.market.leader import LeasedPriceFeed
from cnop.market.prices import PriceBook, Tick
from cnop.market.sources.manual import ManualPriceSource

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
DEADLINE_SECONDS = 10.0


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE_SECONDS:g} s: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def shared(redis_url: str, redis_prefix: str) -> AsyncIterator[SharedRedis]:
    redis = open_redis(Settings(redis_url=redis_url, redis_prefix=redis_prefix))
    assert redis is not None
    yield redis
    await redis.close()


def lease(shared: SharedRedis, holder: str, ttl: float = 5.0) -> FencedLease:
    return FencedLease(shared, "prices", holder, ttl)


def bus(shared: SharedRedis, clock: FakeClock, catalogue: bool = False) -> RedisPriceBus:
    book = PriceBook(clock)
    return RedisPriceBus(shared, book, clock, catalogue=load_catalogue() if catalogue else (), block_seconds=0.1)


# --- the lease ---------------------------------------------------------------------------------


async def test_one_holder_at_a_time_and_every_new_holder_gets_a_greater_token(shared: SharedRedis) -> None:
    a, b = lease(shared, "a"), lease(shared, "b")

    first = await a.acquire()
    assert first is not None and first >= 1
    assert await b.acquire() is None
    assert await a.acquire() == first  # already ours: the same token, extended
    assert await a.current() == (first, "a")

    await a.release()
    second = await b.acquire()

    assert second is not None and second > first
    assert await b.current() == (second, "b")
    assert not a.held and b.held


async def test_after_the_ttl_another_takes_over_and_the_old_holder_cannot_renew(shared: SharedRedis) -> None:
    # a's lease lapses fast; b's outlives the checks below even on a loaded machine (with a short
    # TTL of its own it could lapse between taking over and `current()`).
    a, b = lease(shared, "a", ttl=0.3), lease(shared, "b", ttl=30)
    old = await a.acquire()
    assert old is not None

    async def b_took_over() -> bool:
        return await b.acquire() is not None

    await eventually(b_took_over, "b acquires the lease once a stops renewing")

    assert b.token is not None and b.token > old
    assert await a.renew() is False
    assert a.fence is None
    assert await b.current() == (b.token, "b")
    # A renewal by the deposed holder never extends the new holder's lease, nor does a release.
    await a.release()
    assert await b.current() == (b.token, "b")


async def test_a_deposed_holders_publish_is_refused_and_changes_nothing(shared: SharedRedis) -> None:
    clock = FakeClock(NOW)
    prices = bus(shared, clock)
    a, b = lease(shared, "a"), lease(shared, "b")
    assert await a.acquire() is not None
    stale_fence = a.fence
    assert await prices.publish([Tick("BTC", Decimal("100"), NOW)], fence=stale_fence) is True

    # a stalls past its TTL (the key expires) and b takes over.
    await shared.client.delete(a.key)
    assert await b.acquire() is not None
    refused = await prices.publish([Tick("BTC", Decimal("1"), NOW + timedelta(seconds=1))], fence=stale_fence)
    accepted = await prices.publish([Tick("BTC", Decimal("200"), NOW + timedelta(seconds=2))], fence=b.fence)

    assert refused is False and accepted is True
    entries = await shared.client.xrange(prices.stream_key)
    assert [fields["t"].split("|")[1] for _, fields in entries] == ["100", "200"]
    assert await shared.client.hget(prices.latest_key, "BTC") == f"200|{int((NOW.timestamp() + 2) * 1e6)}"
    assert prices.refused == 1


async def test_leased_feed_publishes_only_while_it_holds_the_lease(shared: SharedRedis) -> None:
    clock = FakeClock(NOW)
    follower = bus(shared, clock)
    source = ManualPriceSource(clock, known_assets={"BTC"})
    holder = lease(shared, "a", ttl=0.6)
    feed = LeasedPriceFeed(holder, source, follower, follower.book)
    following = asyncio.create_task(follower.run())
    leading = asyncio.create_task(feed.run())
    try:
        await eventually(lambda: _true(feed.leading), "the feed takes the free lease")
        await source.set_price("BTC", Decimal("101"))
        await eventually(lambda: _true(_price(follower.book, "BTC") == Decimal("101")), "the tick reaches the book")

        # Someone else takes the lease over (the holder's key vanished, as after a stall).
        await shared.client.delete(holder.key)
        other = lease(shared, "b", ttl=30)
        assert await other.acquire() is not None
        clock.advance(1)
        await source.set_price("BTC", Decimal("999"))
        await eventually(lambda: _true(not feed.leading), "the deposed feed stops publishing")
        await asyncio.sleep(0.2)

        assert _price(follower.book, "BTC") == Decimal("101")
        assert follower.refused >= 1
        entries = await shared.client.xrange(follower.stream_key)
        assert [fields["t"].split("|")[1] for _, fields in entries] == ["101"]
    finally:
        leading.cancel()
        following.cancel()
        await asyncio.gather(leading, following, return_exceptions=True)
        await source.close()


async def _true(value: bool) -> bool:
    return value


def _price(book: PriceBook, asset_id: str) -> Decimal | None:
    tick = book.current(asset_id)
    return None if tick is None else tick.price


# --- the bus -----------------------------------------------------------------------------------


def batches() -> list[list[Tick]]:
    """Three hours of ticks for two assets, several a minute, with moves inside each minute."""
    out = []
    for i in range(0, 3 * 3600, 20):
        at = NOW - timedelta(hours=3) + timedelta(seconds=i)
        wobble = Decimal((i * 7919) % 200) - 100
        out.append([Tick("BTC", Decimal(60000) + wobble, at), Tick("ETH", Decimal(3000) + wobble / 10, at)])
    # An out-of-order tick (older than the latest): every book ignores it, and so does the stream.
    out.append([Tick("BTC", Decimal(1), NOW - timedelta(hours=4))])
    return out


async def test_redis_and_local_buses_give_every_book_the_same_ticks_in_the_same_order(shared: SharedRedis) -> None:
    clock = FakeClock(NOW)
    one, two = bus(shared, clock), bus(shared, clock)
    local = LocalPriceBus(PriceBook(clock))
    await one.start()
    await two.start()
    tasks = [asyncio.create_task(one.run()), asyncio.create_task(two.run())]
    try:
        sent = batches()
        for index, batch in enumerate(sent):
            # Publishers alternate, as two API processes taking admin price changes would.
            assert await (one if index % 2 else two).publish(batch) is True
            assert await local.publish(batch) is True

        last = sent[-2][0].at

        async def caught_up() -> bool:
            return all(b.book.current("BTC") is not None and b.book.current("BTC").at == last for b in (one, two))

        await eventually(caught_up, "both books apply the whole stream")
        for asset in ("BTC", "ETH"):
            expected = local.book.history(asset)
            assert one.book.history(asset) == expected
            assert two.book.history(asset) == expected
            assert one.book.stats(asset) == local.book.stats(asset) == two.book.stats(asset)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_late_joiner_starts_from_the_latest_prices_and_the_same_24h_figures(shared: SharedRedis) -> None:
    clock = FakeClock(NOW - timedelta(hours=3, minutes=1))  # the first process seeds before the ticks
    early = bus(shared, clock, catalogue=True)
    await early.start()
    running = asyncio.create_task(early.run())
    try:
        sent = batches()
        for batch in sent:
            await early.publish(batch)
        last = sent[-2][0]
        assert early.book.current("BTC") == last

        late = bus(shared, clock, catalogue=True)
        await late.start()

        assert late.book.current("BTC") == early.book.current("BTC") == last
        assert late.book.snapshot() == early.book.snapshot()
        for asset in ("BTC", "ETH"):
            assert late.book.stats(asset) == early.book.stats(asset)
        # Assets nobody published keep the shared seed (the first process's catalogue snapshot).
        assert late.book.current("SOL") == early.book.current("SOL")
        assert late.book.current("SOL") is not None
        # The chart a late joiner draws: one point per minute from the shared history.
        since = NOW - timedelta(hours=2)
        late_chart = late.book.history("BTC", since=since, interval_seconds=60)
        early_chart = early.book.history("BTC", since=since, interval_seconds=60)
        assert [t.price for t in late_chart] == [t.price for t in early_chart]
        assert len(late_chart) >= 119
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_the_shared_state_stays_bounded(shared: SharedRedis) -> None:
    clock = FakeClock(NOW)
    prices = RedisPriceBus(shared, PriceBook(clock), clock, stream_maxlen=100)
    for i in range(2000):
        await prices.publish([Tick("BTC", Decimal(100 + i % 7), NOW + timedelta(seconds=i * 30))])

    assert await shared.client.xlen(prices.stream_key) < 300  # trimmed to about 100 (MAXLEN ~)
    assert await shared.client.hlen(prices.latest_key) == 1
    minutes, hours = prices.history_keys.values()
    assert await shared.client.hlen(minutes) <= 1440
    assert await shared.client.hlen(hours) <= 720


# --- the composition root ----------------------------------------------------------------------


def _settings(tmp_path: Path, redis_url: str, redis_prefix: str, **overrides: object) -> Settings:
    return Settings(
        store=f"sqlite:///{tmp_path / 'cnop.db'}",
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        **overrides,  # type: ignore[arg-type]
    )


async def test_with_redis_only_a_publisher_opens_a_source_and_api_processes_follow(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    api = build_container(_settings(tmp_path, redis_url, redis_prefix, trigger_engine=False))
    worker = build_container(_settings(tmp_path, redis_url, redis_prefix, trigger_engine=True))
    local = build_container(Settings(store=f"sqlite:///{tmp_path / 'local.db'}"))
    try:
        assert api.price_source is None and api.price_lease is None
        assert isinstance(api.price_bus, RedisPriceBus)
        assert worker.price_source is not None and worker.price_lease is not None
        assert isinstance(local.price_bus, LocalPriceBus) and local.price_lease is None
        assert local.price_source is not None
    finally:
        for container in (api, worker, local):
            await container.store.close()
            if container.redis is not None:
                await container.redis.close()


async def test_an_admin_price_on_one_api_process_is_the_quote_on_the_other(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    settings = _settings(tmp_path, redis_url, redis_prefix, trigger_engine=False, price_source="manual")
    one, two = build_container(settings), build_container(settings)
    tasks: list[asyncio.Task[None]] = []
    try:
        for container in (one, two):
            await container.price_bus.start()
            tasks.extend(asyncio.create_task(task()) for task in container.background)
        assert isinstance(one.price_source, ManualPriceSource)

        for price in ("70000.01", "69999.5", "71000"):
            await one.price_source.set_prices_applied({"BTC": Decimal(price)})
            # Read-your-write on the process the admin used; the other follows within a moment.
            assert _price(one.price_book, "BTC") == Decimal(price)
            await eventually(lambda: _true(two.price_book.current("BTC") == one.price_book.current("BTC")), price)
        assert one.price_book.stats("BTC") == two.price_book.stats("BTC")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for container in (one, two):
            await container.store.close()
            if container.redis is not None:
                await container.redis.close()


async def test_gtd_expiry_runs_in_one_engine_of_the_fleet_and_moves_when_its_holder_is_gone(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    settings = _settings(tmp_path, redis_url, redis_prefix, trigger_engine=True, price_source="manual")
    one, two = build_container(settings), build_container(settings)
    alone = build_container(Settings(store=f"sqlite:///{tmp_path / 'alone.db'}"))
    try:
        assert alone.triggers.expiry_lease is None
        assert await alone.triggers._expires_here() is True
        first, second = one.triggers.expiry_lease, two.triggers.expiry_lease
        assert first is not None and second is not None

        assert await one.triggers._expires_here() is True
        assert await two.triggers._expires_here() is False
        assert await one.triggers._expires_here() is True  # renewed, still the one

        assert one.redis is not None
        await one.redis.client.delete(first.key)  # one died: its lease lapsed
        assert await two.triggers._expires_here() is True
        assert await one.triggers._expires_here() is False
        assert second.token is not None and first.token is None
    finally:
        for container in (one, two, alone):
            await container.store.close()
            if container.redis is not None:
                await container.redis.close()


# --- trigger work split between engines --------------------------------------------------------


async def test_engines_split_the_shards_and_a_dead_engines_shards_are_taken_over(shared: SharedRedis) -> None:
    gained: dict[str, list[set[int]]] = {"a": [], "b": []}
    a, b = AssetShards(shared, "a", 5.0), AssetShards(shared, "b", 5.0)
    a.on_gain = gained["a"].append
    b.on_gain = gained["b"].append

    await a.balance()
    assert a.owned == set(range(SHARDS))  # alone, it owns everything
    await b.balance()  # b joins: there is nothing free yet
    await a.balance()  # a sees two members and gives half back
    await b.balance()  # b takes the free half
    await a.balance()
    await b.balance()

    assert a.owned.isdisjoint(b.owned)
    assert a.owned | b.owned == set(range(SHARDS))
    assert len(a.owned) == len(b.owned) == SHARDS // 2
    for asset in ("BTC", "ETH", "SOL", "DOGE", "ADA"):
        assert a.owns(asset) != b.owns(asset)
    assert gained["b"] and set().union(*gained["b"]) == b.owned

    # a dies without a word: its shard leases lapse and its heartbeat goes stale.
    dead = a.owned
    for k in dead:
        await shared.client.delete(a.leases[k].key)
    await shared.client.zadd(b.members_key, {"a": 0})
    await b.balance()

    assert b.owned == set(range(SHARDS))
    assert gained["b"][-1] == dead
    # Tokens only grow: the survivor's leases on a's old shards are newer than a's were.
    assert all(b.leases[k].token is not None for k in dead)


async def test_an_engine_skips_the_ticks_of_assets_another_engine_owns(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    settings = _settings(tmp_path, redis_url, redis_prefix, trigger_engine=True, price_source="manual")
    one = build_container(settings)
    try:
        shards = one.triggers.shards
        assert isinstance(shards, AssetShards)
        assert not shards.owns("BTC")  # nothing acquired yet: another engine may own it
        await shards.balance()
        assert shards.owns("BTC") and shards.owns("ETH")
    finally:
        await one.store.close()
        if one.redis is not None:
            await one.redis.close()
