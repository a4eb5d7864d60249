"""The login guard: five failures from one address block its logins for the block period."""

from __future__ import annotations

import pytest

from cnop.common.clock import FakeClock, SystemClock
from cnop.common.exceptions import LoginBlocked
from cnop.common.security.login_guard import InMemoryLoginGuard, SharedLoginGuard, login_guard_from_settings
from cnop.gateway.middleware import MemoryCounters

from .conftest import make_settings

IP = "203.0.113.7"
OTHER_IP = "198.51.100.9"


def guard(clock: FakeClock, **kwargs: int) -> InMemoryLoginGuard:
    return InMemoryLoginGuard.from_settings(make_settings(**kwargs), clock)


async def test_five_failures_block_the_sixth_attempt_with_403() -> None:
    clock = FakeClock()
    login_guard = guard(clock)
    for _ in range(5):
        await login_guard.check(IP)  # each of the five attempts is allowed to try
        await login_guard.record_failure(IP)

    with pytest.raises(LoginBlocked) as blocked:
        await login_guard.check(IP)

    assert blocked.value.status == 403
    assert blocked.value.code == "login_blocked"
    assert blocked.value.extra["retry_after"] == 300


async def test_the_block_expires_after_the_block_period() -> None:
    clock = FakeClock()
    login_guard = guard(clock)
    for _ in range(5):
        await login_guard.record_failure(IP)

    clock.advance(299)
    with pytest.raises(LoginBlocked) as blocked:
        await login_guard.check(IP)
    assert blocked.value.extra["retry_after"] == 1

    clock.advance(1)
    await login_guard.check(IP)
    # A fresh start: one more failure does not re-block.
    await login_guard.record_failure(IP)
    await login_guard.check(IP)


async def test_other_addresses_are_unaffected() -> None:
    clock = FakeClock()
    login_guard = guard(clock)
    for _ in range(5):
        await login_guard.record_failure(IP)

    await login_guard.check(OTHER_IP)
    with pytest.raises(LoginBlocked):
        await login_guard.check(IP)


async def test_failures_older_than_the_window_do_not_count() -> None:
    clock = FakeClock()
    login_guard = guard(clock)
    for _ in range(4):
        await login_guard.record_failure(IP)
    clock.advance(301)
    await login_guard.record_failure(IP)

    await login_guard.check(IP)


async def test_a_success_does_not_wipe_the_failures() -> None:
    clock = FakeClock()
    login_guard = guard(clock)
    for _ in range(4):
        await login_guard.record_failure(IP)
    await login_guard.record_success(IP)
    await login_guard.record_failure(IP)

    with pytest.raises(LoginBlocked):
        await login_guard.check(IP)


async def test_the_limits_come_from_settings() -> None:
    clock = FakeClock()
    login_guard = guard(clock, login_guard_failures=2, login_guard_block_seconds=60)
    await login_guard.record_failure(IP)
    await login_guard.check(IP)
    await login_guard.record_failure(IP)

    with pytest.raises(LoginBlocked) as blocked:
        await login_guard.check(IP)
    assert blocked.value.extra["retry_after"] == 60


async def test_memory_stays_bounded() -> None:
    clock = FakeClock()
    login_guard = InMemoryLoginGuard(clock, max_tracked=10)
    for n in range(1000):
        await login_guard.record_failure(f"10.0.{n // 256}.{n % 256}")
    assert login_guard.tracked() <= 10

    # Expired state is swept as time passes.
    login_guard = InMemoryLoginGuard(clock)
    for n in range(50):
        await login_guard.record_failure(f"10.1.0.{n}")
    for _ in range(5):
        await login_guard.record_failure(IP)
    clock.advance(301)
    await login_guard.record_failure(OTHER_IP)
    assert login_guard.tracked() == 1


async def test_the_shared_guard_blocks_and_unblocks_the_same_way() -> None:
    clock = FakeClock()
    login_guard = SharedLoginGuard.from_settings(make_settings(), MemoryCounters(clock), clock)
    for _ in range(4):
        await login_guard.record_failure(IP)
    await login_guard.check(IP)
    await login_guard.record_failure(IP)

    with pytest.raises(LoginBlocked) as blocked:
        await login_guard.check(IP)
    assert blocked.value.extra["retry_after"] == 300
    await login_guard.check(OTHER_IP)

    clock.advance(300)
    await login_guard.check(IP)
    await login_guard.record_failure(IP)  # the count started over
    await login_guard.check(IP)


def test_the_factory_picks_the_guard_for_the_shape() -> None:
    assert isinstance(login_guard_from_settings(make_settings(), FakeClock()), InMemoryLoginGuard)
    shared = login_guard_from_settings(make_settings(), FakeClock(), storage=MemoryCounters())
    assert isinstance(shared, SharedLoginGuard)


async def test_with_redis_two_guards_share_the_failures(redis_url: str, redis_prefix: str) -> None:
    # Two processes' guards on one Redis: failures spread over both block the address on both.
    settings = make_settings(redis_url=redis_url, redis_prefix=redis_prefix)
    first, second = (login_guard_from_settings(settings, SystemClock()) for _ in range(2))
    assert isinstance(first, SharedLoginGuard)
    for attempt in range(5):
        await (first if attempt % 2 else second).record_failure(IP)
    for guard_ in (first, second):
        with pytest.raises(LoginBlocked) as blocked:
            await guard_.check(IP)
        assert 299 <= blocked.value.extra["retry_after"] <= 300
        await guard_.check(OTHER_IP)
