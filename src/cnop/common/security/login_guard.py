"""The login guard: too many failed logins from one address block that address's logins for a while.

The policy (docs/security.md, "Limits"): `login_guard_failures` (5) failures from one IP within
`login_guard_window_seconds` (300) block logins from that IP for `login_guard_block_seconds`
(300); a blocked attempt is 403 `login_blocked`, with `Retry-After`. The login endpoint calls
`check(ip)` before verifying the password, then `record_failure(ip)` or `record_success(ip)`.

A success does not wipe the failures: the guard counts guesses per address, and an attacker who
owns one account could otherwise interleave a good login between every four guesses at other
accounts. `record_success` is kept so the endpoint reads the same for both outcomes and a later
policy has a place to live.

Per account, `AccountThrottle` adds what the per-IP guard cannot see (guesses at one account from
many addresses): after `login_account_free_failures` failures for one username, each further
attempt must wait a delay that doubles with every failure, up to `login_account_max_delay_seconds`;
an attempt inside the delay is 429 `login_throttled` with `Retry-After`, whatever the password.
It never locks an account: the owner waits at most the maximum delay, and a success resets it.
It counts on a `CounterStore` (in-process, or Redis when `redis_url` is set), so swapping the
counters swaps it too.

One implementation of the per-IP guard, `SharedLoginGuard`, on a `CounterStore`: failures are
counted in a fixed window that opens at the first failure, the block is a counter that expires
after the block period, and expiry is kept by the store. Two stores: `InMemoryLoginGuard` puts
it on `MemoryCounters` (one process; time from the injected `Clock`; memory bounded); with
`redis_url` set the composition root gives it the process's shared counters (Redis through
`limits`, falling back to per-process counting while Redis fails: see `cnop.common.counters`),
so failures spread over every gateway process block the address on all of them.
"""

from __future__ import annotations

import math
from typing import Protocol

from cnop.common.clock import Clock, SystemClock
from cnop.common.config import Settings
from cnop.common.counters import CounterStore, MemoryCounters, counter_store
from cnop.common.exceptions import LoginBlocked, LoginThrottled


class LoginGuard(Protocol):
    async def check(self, ip: str) -> None:
        """Raise `LoginBlocked` if logins from `ip` are blocked."""
        ...

    async def record_failure(self, ip: str) -> None:
        """Count a failed login from `ip`; the failure that reaches the limit starts the block."""
        ...

    async def record_success(self, ip: str) -> None:
        """Note a successful login from `ip` (it does not clear the failures; see the module)."""
        ...


def _blocked(seconds_left: float) -> LoginBlocked:
    retry_after = max(1, math.ceil(seconds_left))
    return LoginBlocked(
        f"Too many failed logins from this address; try again in {retry_after} s", retry_after=retry_after
    )


class SharedLoginGuard:
    """The guard on a `limits` storage (Redis in the cloud shape), shared by every process."""

    def __init__(
        self,
        storage: CounterStore,
        *,
        failures: int = 5,
        window_seconds: int = 300,
        block_seconds: int = 300,
        namespace: str = "login_guard",
        clock: Clock | None = None,
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self._storage = storage
        self._limit = failures
        self._window = window_seconds
        self._block = block_seconds
        self._namespace = namespace
        self._clock = clock or SystemClock()

    @classmethod
    def from_settings(cls, settings: Settings, storage: CounterStore, clock: Clock | None = None) -> SharedLoginGuard:
        return cls(
            storage,
            failures=settings.login_guard_failures,
            window_seconds=settings.login_guard_window_seconds,
            block_seconds=settings.login_guard_block_seconds,
            clock=clock,
        )

    def _key(self, kind: str, ip: str) -> str:
        return f"{self._namespace}/{kind}/{ip}"

    async def check(self, ip: str) -> None:
        key = self._key("block", ip)
        if await self._storage.get(key):
            raise _blocked(await self._storage.get_expiry(key) - self._clock.timestamp())

    async def record_failure(self, ip: str) -> None:
        failures_key = self._key("fail", ip)
        if await self._storage.incr(failures_key, self._window) >= self._limit:
            # The expiry is set by the first increment only, so a racing second one cannot extend it.
            await self._storage.incr(self._key("block", ip), self._block)
            await self._storage.clear(failures_key)

    async def record_success(self, ip: str) -> None:
        return None


class InMemoryLoginGuard(SharedLoginGuard):
    """The guard for one process: the same rules on `MemoryCounters` (at most `max_tracked` counters)."""

    def __init__(
        self,
        clock: Clock,
        *,
        failures: int = 5,
        window_seconds: int = 300,
        block_seconds: int = 300,
        max_tracked: int = 100_000,
    ) -> None:
        self._counters = MemoryCounters(clock, max_keys=max_tracked, sweep_seconds=min(window_seconds, block_seconds))
        super().__init__(
            self._counters, failures=failures, window_seconds=window_seconds, block_seconds=block_seconds, clock=clock
        )

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> InMemoryLoginGuard:  # type: ignore[override]
        return cls(
            clock,
            failures=settings.login_guard_failures,
            window_seconds=settings.login_guard_window_seconds,
            block_seconds=settings.login_guard_block_seconds,
        )

    def tracked(self) -> int:
        """How many counters (failures or blocks) the guard holds."""
        return len(self._counters)


def login_guard_from_settings(settings: Settings, clock: Clock, storage: CounterStore | None = None) -> LoginGuard:
    """The shared guard when a storage is given or `redis_url` is set, else the in-memory one."""
    if storage is None and not settings.redis_url:
        return InMemoryLoginGuard.from_settings(settings, clock)
    if storage is None:
        storage = counter_store(settings, clock)
    return SharedLoginGuard.from_settings(settings, storage, clock)


class AccountThrottle:
    """Failed logins per account, answered with growing delays instead of a lock (see the module)."""

    def __init__(
        self,
        storage: CounterStore,
        *,
        free_failures: int = 5,
        base_delay_seconds: float = 1.0,
        max_delay_seconds: float = 60.0,
        window_seconds: int = 3600,
        namespace: str = "login_account",
        clock: Clock | None = None,
    ) -> None:
        if free_failures < 1:
            raise ValueError("free_failures must be at least 1")
        self._storage = storage
        self._free = free_failures
        self._base = base_delay_seconds
        self._max = max_delay_seconds
        self._window = window_seconds
        self._namespace = namespace
        self._clock = clock or SystemClock()

    @classmethod
    def from_settings(cls, settings: Settings, storage: CounterStore, clock: Clock | None = None) -> AccountThrottle:
        return cls(
            storage,
            free_failures=settings.login_account_free_failures,
            base_delay_seconds=settings.login_account_base_delay_seconds,
            max_delay_seconds=settings.login_account_max_delay_seconds,
            window_seconds=settings.login_account_window_seconds,
            clock=clock,
        )

    def _key(self, kind: str, username: str) -> str:
        return f"{self._namespace}/{kind}/{username.lower()}"

    def delay_after(self, failures: int) -> float:
        """How long the next attempt must wait after `failures` failures in the window."""
        if failures < self._free:
            return 0.0
        return float(min(self._max, self._base * 2 ** min(failures - self._free, 32)))

    async def check(self, username: str) -> None:
        """Raise `LoginThrottled` while the account's delay runs."""
        key = self._key("wait", username)
        if await self._storage.get(key):
            seconds_left = await self._storage.get_expiry(key) - self._clock.timestamp()
            retry_after = max(1, math.ceil(seconds_left))
            raise LoginThrottled(
                f"Too many failed logins for this account; try again in {retry_after} s", retry_after=retry_after
            )

    async def record_failure(self, username: str) -> None:
        failures = await self._storage.incr(self._key("fail", username), self._window)
        delay = self.delay_after(failures)
        if delay > 0:
            wait_key = self._key("wait", username)
            await self._storage.clear(wait_key)
            await self._storage.incr(wait_key, max(1, math.ceil(delay)))

    async def record_success(self, username: str) -> None:
        await self._storage.clear(self._key("fail", username))
        await self._storage.clear(self._key("wait", username))
