"""The shared-state ports, one suite for both implementations: in-process and Redis (a real redis-server).

Each test gets `impl` ("memory" or "redis") and builds "processes" through it: with Redis each
process is a separate client (its own connection pool, like another OS process), so what one
counts or publishes the other sees only through Redis; in memory one process is all there is.
Outage tests (Redis only) stop the test's own redis-server and start it again on the same port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from structlog.testing import capture_logs

from cnop.common.clock import SystemClock
from cnop.common.config import Settings
from cnop.common.counters import CounterStore, FallbackCounters, MemoryCounters, counter_store
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.exceptions import LoginBlocked
from cnop.common.security import TokenManager
from cnop.common.security.login_guard import AccountThrottle, SharedLoginGuard
from cnop.common.shared.invalidation import ALL, TOKEN, USER, Invalidations, LocalInvalidations, RedisInvalidations
from cnop.common.shared.redis import SharedRedis, open_redis
from cnop.gateway.middleware import RateLimitMiddleware
from cnop.market.catalogue import load_catalogue
from cnop.services.inventory.service import asset_from_catalogue
from tests.support.redis_server import RedisServer

DEADLINE_SECONDS = 10.0


def settings_for(redis_url: str | None, prefix: str = "cnop:", **values: Any) -> Settings:
    base: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_prefix": prefix,
        "redis_socket_timeout_seconds": 10.0,  # a loaded CI machine must not look like an outage
        "redis_connect_timeout_seconds": 5.0,
        "rate_limit_per_ip": "1000/minute",
        "rate_limit_per_user": "3/minute",
    }
    base.update(values)
    return Settings(_env_file=None, **base)


async def eventually(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Poll until `condition` holds; fail after a generous deadline (never a duration assertion)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE_SECONDS:.0f} s: {what}")
        await asyncio.sleep(0.02)


class Processes:
    """Builds the port implementations of one or more "processes" for `impl`."""

    def __init__(self, impl: str, settings: Settings) -> None:
        self.impl = impl
        self.settings = settings
        self._memory_counters: MemoryCounters | None = None
        self._memory_channel: LocalInvalidations | None = None
        self._redis: list[SharedRedis] = []
        self._closers: list[Callable[[], Awaitable[object]]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def counters(self) -> CounterStore:
        if self.impl == "memory":
            if self._memory_counters is None:
                self._memory_counters = MemoryCounters()
            return self._memory_counters
        store = counter_store(self.settings)
        assert isinstance(store, FallbackCounters)
        return store

    async def channel(self) -> Invalidations:
        if self.impl == "memory":
            if self._memory_channel is None:
                self._memory_channel = LocalInvalidations()
            return self._memory_channel
        redis = open_redis(self.settings)
        assert redis is not None
        self._closers.append(redis.close)
        channel = RedisInvalidations(redis, retry_seconds=0.05, max_retry_seconds=0.2)
        self._tasks.append(asyncio.create_task(channel.run()))
        async with asyncio.timeout(DEADLINE_SECONDS):
            await channel.wait_connected()
        return channel

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for close in self._closers:
            await close()


@pytest.fixture(params=["memory", "redis"])
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def processes(impl: str, request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Processes]:
    url = request.getfixturevalue("redis_url") if impl == "redis" else None
    built = Processes(impl, settings_for(url, redis_prefix))
    yield built
    await built.close()


# --- counters ---------------------------------------------------------------------------------


async def test_counters_count_per_key_and_clear(processes: Processes) -> None:
    first, second = processes.counters(), processes.counters()
    assert [await first.incr("a", 60), await second.incr("a", 60), await first.incr("a", 60, amount=3)] == [1, 2, 5]
    assert await second.incr("b", 60) == 1
    assert (await first.get("a"), await second.get("a"), await first.get("missing")) == (5, 5, 0)
    await second.clear("a")
    assert await first.get("a") == 0
    assert await first.incr("a", 60) == 1
    assert await first.get("b") == 1


async def test_the_first_increment_sets_the_expiry_and_later_ones_never_move_it(processes: Processes) -> None:
    first, second = processes.counters(), processes.counters()
    before = time.time()
    await first.incr("k", 60)
    await second.incr("k", 5)  # another process, another window length: the first one holds
    expires = await second.get_expiry("k")
    assert before + 58 <= expires <= time.time() + 61


async def test_a_counter_ends_with_its_window(processes: Processes) -> None:
    counters = processes.counters()
    await counters.incr("short", 1)
    assert await counters.get("short") == 1
    await eventually(lambda: _is_zero(counters, "short"), "the 1 s counter expired")
    assert await counters.incr("short", 1) == 1  # a new window starts from zero


async def _is_zero(counters: CounterStore, key: str) -> bool:
    return await counters.get(key) == 0


async def test_concurrent_increments_are_atomic_across_processes(processes: Processes) -> None:
    views = [processes.counters() for _ in range(3)]
    results = await asyncio.gather(*(views[n % 3].incr("hot", 60) for n in range(60)))
    assert sorted(results) == list(range(1, 61))  # every increment saw its own count: none lost
    assert await views[0].get("hot") == 60
    assert time.time() < await views[1].get_expiry("hot") <= time.time() + 61


# --- the login guard and the account throttle, on each store -----------------------------------


async def test_failed_logins_spread_over_processes_block_the_address_on_all(processes: Processes) -> None:
    guards = [SharedLoginGuard(processes.counters(), clock=SystemClock()) for _ in range(2)]
    for attempt in range(4):
        await guards[attempt % 2].record_failure("203.0.113.9")
    for guard in guards:
        await guard.check("203.0.113.9")  # four failures: still allowed
    await guards[1].record_failure("203.0.113.9")
    for guard in guards:
        with pytest.raises(LoginBlocked) as blocked:
            await guard.check("203.0.113.9")
        assert blocked.value.status == 403
        assert 299 <= blocked.value.extra["retry_after"] <= 300
        await guard.check("198.51.100.1")


async def test_the_account_throttle_is_shared_and_a_success_resets_it(processes: Processes) -> None:
    throttles = [AccountThrottle(processes.counters(), free_failures=2, clock=SystemClock()) for _ in range(2)]
    await throttles[0].record_failure("Alice")
    await throttles[1].record_failure("alice")
    with pytest.raises(Exception, match="try again") as throttled:
        await throttles[0].check("ALICE")
    assert throttled.value.status == 429  # type: ignore[attr-defined]
    await throttles[1].record_success("alice")
    await throttles[0].check("alice")


# --- rate limits: N per user in total over every process, headers exact ------------------------


def _limited_app(counters: CounterStore, settings: Settings) -> RateLimitMiddleware:
    app = FastAPI()

    @app.get("/x")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    def user(scope: Any) -> str | None:
        return "alice"

    return RateLimitMiddleware(app, settings, identify_user=user, storage=counters)


async def test_a_per_user_limit_holds_over_every_process_with_exact_headers(processes: Processes) -> None:
    apps = [_limited_app(processes.counters(), processes.settings) for _ in range(2)]
    clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") for app in apps]
    try:
        responses = [await clients[n % 2].get("/x") for n in range(4)]
    finally:
        for client in clients:
            await client.aclose()
    seen = [(r.status_code, dict(r.headers)) for r in responses]
    assert [r.status_code for r in responses] == [200, 200, 200, 429], seen
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["2", "1", "0", "0"], seen
    assert {r.headers["X-RateLimit-Limit"] for r in responses} == {"3"}
    resets = {int(r.headers["X-RateLimit-Reset"]) for r in responses}
    assert len(resets) == 1 and time.time() < resets.pop() <= time.time() + 61, seen
    assert responses[3].json()["code"] == "rate_limited"
    assert 1 <= int(responses[3].headers["Retry-After"]) <= 60


# --- cache invalidation -------------------------------------------------------------------------


async def test_an_invalidation_reaches_every_process_and_the_publisher_at_once(processes: Processes) -> None:
    publisher, other = await processes.channel(), await processes.channel()
    here: list[str] = []
    there: list[str] = []
    publisher.subscribe("asset", here.append)
    other.subscribe("asset", there.append)
    other.subscribe("token", lambda key: there.append(f"token:{key}"))

    await publisher.publish("asset", "BTC")
    assert here == ["BTC"]  # handled in the publishing process before publish returns
    await eventually(lambda: "BTC" in there, "the other process dropped BTC")
    await publisher.publish("token", "jti-1")
    await eventually(lambda: "token:jti-1" in there, "the other process forgot the token")
    assert here == ["BTC"]  # its own message is not handled twice, other topics not at all
    assert publisher.connected and other.connected


async def test_a_failing_handler_does_not_stop_the_others(processes: Processes) -> None:
    channel = await processes.channel()
    seen: list[str] = []

    def broken(key: str) -> None:
        raise RuntimeError("bug in a cache")

    channel.subscribe("asset", broken)
    channel.subscribe("asset", seen.append)
    with capture_logs() as logs:
        await channel.publish("asset", "ETH")
    assert seen == ["ETH"]
    assert any(entry["event"] == "invalidation_handler_failed" for entry in logs)


# --- Redis outages (Redis only) -----------------------------------------------------------------


@pytest.fixture
async def outage(restartable_redis: RedisServer, redis_prefix: str) -> AsyncIterator[tuple[RedisServer, Processes]]:
    built = Processes("redis", settings_for(restartable_redis.url, redis_prefix))
    yield restartable_redis, built
    await built.close()


async def test_counters_fall_back_to_the_process_and_come_back_by_themselves(
    outage: tuple[RedisServer, Processes],
) -> None:
    redis, processes = outage
    counters = processes.counters()
    assert isinstance(counters, FallbackCounters)
    counters.retry_seconds = 0.05
    assert await counters.incr("k", 60) == 1

    with capture_logs() as logs:
        redis.stop()
        # Never off, never an exception: the process counts on its own.
        assert [await counters.incr("k", 60) for _ in range(3)] == [1, 2, 3]
        assert counters.degraded
        assert time.time() < await counters.get_expiry("k") <= time.time() + 61
        for _ in range(20):  # many more calls, still one log line for the transition
            await counters.incr("other", 60)
        redis.restart()  # an empty Redis, same port
        await eventually(lambda: _back(counters), "the counters use Redis again")
    events = [entry["event"] for entry in logs]
    assert events.count("shared_counters_unavailable") == 1
    assert events.count("shared_counters_restored") == 1
    # Counting is shared again (in the new, empty Redis): a second process sees the count.
    assert await counters.incr("k", 60) == 1
    assert await processes.counters().get("k") == 1


async def _back(counters: FallbackCounters) -> bool:
    await counters.incr("probe", 60)
    return not counters.degraded


async def test_the_invalidation_channel_survives_an_outage_and_then_drops_everything(
    outage: tuple[RedisServer, Processes],
) -> None:
    redis, processes = outage
    publisher, other = await processes.channel(), await processes.channel()
    there: list[str] = []
    other.subscribe("asset", there.append)

    redis.stop()
    await eventually(lambda: not other.connected, "the listener saw Redis go")
    with capture_logs() as logs:
        await publisher.publish("asset", "SOL")  # lost for the others, but no error here
        await publisher.publish("asset", "ADA")
    assert [e["event"] for e in logs].count("invalidation_publish_failed") == 1

    redis.restart()
    # Messages may have been missed while cut off: the listener drops everything once it is back.
    await eventually(lambda: ALL in there, "the listener reconnected and invalidated everything")
    await eventually(lambda: publisher.connected, "the publisher's listener is back")
    await publisher.publish("asset", "DOT")
    await eventually(lambda: "DOT" in there, "invalidations flow again")
    assert "SOL" not in there


# --- the caches that listen: assets and verified tokens -------------------------------------------


async def test_deactivating_an_asset_in_one_process_is_seen_by_the_other_at_once(
    processes: Processes, tmp_path: Path
) -> None:
    """Two processes' asset DAOs over one store, caching for an hour: only the channel can tell them."""
    store = SQLiteStore(str(tmp_path / "assets.db"))
    await store.create_tables()
    clock = SystemClock()
    try:
        admin_side = AssetDAO(store, clock, cache_seconds=3600, invalidations=await processes.channel())
        order_side = AssetDAO(store, clock, cache_seconds=3600, invalidations=await processes.channel())
        entry = load_catalogue()[0]
        assert await admin_side.create_asset(asset_from_catalogue(entry, clock.now()), entry.house_inventory)
        assert (await order_side.get_asset(entry.asset_id)).is_active  # now cached on the order side

        await admin_side.deactivate_asset(entry.asset_id)
        await eventually(lambda: _inactive(order_side, entry.asset_id), "the order side saw the deactivation")
        assert [a.is_active for a in await order_side.all_assets()] == [False]
    finally:
        await store.close()


async def _inactive(assets: AssetDAO, asset_id: str) -> bool:
    return not (await assets.get_asset(asset_id)).is_active


async def test_logout_and_password_change_make_every_process_forget_the_tokens(processes: Processes) -> None:
    settings = Settings(_env_file=None, jwt_secret="test-secret-that-is-long-enough-for-hs256-0123456789")
    issuer, verifier = TokenManager(settings), TokenManager(settings)
    channel = await processes.channel()
    listener = await processes.channel()
    listener.subscribe(TOKEN, verifier.forget_token)
    listener.subscribe(USER, verifier.forget_subject)
    first = issuer.create_access_token("alice", "customer", token_generation=0)
    second = issuer.create_access_token("alice", "customer", token_generation=0)
    bob = issuer.create_access_token("bob", "customer", token_generation=0)
    for token in (first, second, bob):
        verifier.verify_access_token(token.access_token)
    assert verifier.remembered() == 3

    await channel.publish(TOKEN, first.jti)
    await eventually(lambda: verifier.remembered() == 2, "the logout reached the verifier")
    await channel.publish(USER, "alice")
    await eventually(lambda: verifier.remembered() == 1, "the password change reached the verifier")
    # Forgetting costs a signature check, nothing more: the revocation itself is the store's.
    assert verifier.verify_access_token(second.access_token).sub == "alice"


async def test_while_redis_is_down_one_call_probes_it_and_the_others_stay_local() -> None:
    class Stalled:
        """A shared store that fails after a while, like a Redis that stopped answering."""

        calls = 0

        async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
            Stalled.calls += 1
            await asyncio.sleep(0.2)
            raise TimeoutError("no answer")

        async def get(self, key: str) -> int:
            raise AssertionError("not used")

        async def get_expiry(self, key: str) -> float:
            raise AssertionError("not used")

        async def clear(self, key: str) -> None:
            raise AssertionError("not used")

    counters = FallbackCounters(Stalled(), MemoryCounters(), retry_seconds=0.05)
    with capture_logs():
        assert await counters.incr("k", 60) == 1  # the first failure: counted locally
        assert counters.degraded
        await asyncio.sleep(0.06)  # the retry interval is over: the next call probes
        counters.retry_seconds = 60.0  # (and the probe's interval outlasts any scheduling delay)
        counts = await asyncio.gather(*(counters.incr("k", 60) for _ in range(20)))
    assert sorted(counts) == list(range(2, 22))  # every one counted, none lost
    assert Stalled.calls == 2  # the first call, then one probe; the other 19 did not wait for it
