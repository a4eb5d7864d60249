"""The login guard: too many failed logins from one address block that address's logins for a while.

Design §8: `login_guard_failures` (5) failures from one IP within `login_guard_window_seconds`
(300) block logins from that IP for `login_guard_block_seconds` (300); a blocked attempt is
403 `login_blocked`, with `Retry-After`. The login endpoint calls `check(ip)` before verifying
the password, then `record_failure(ip)` or `record_success(ip)`.

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

Two implementations of the per-IP guard: `InMemoryLoginGuard` (one process; time from the injected `Clock`; memory
bounded; a sliding window) and `SharedLoginGuard` (on a `CounterStore`: Redis through `limits`
when `redis_url` is set, so every gateway process shares it; failures are counted in a fixed
window that opens at the first failure, and expiry is kept by the store).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

from cnop.common.clock import Clock, SystemClock
from cnop.common.config import Settings
from cnop.common.counters import CounterStore, counter_store
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


class InMemoryLoginGuard:
    """The guard for one process. Memory: at most `max_tracked` addresses, expired entries swept."""

    def __init__(
        self,
        clock: Clock,
        *,
        failures: int = 5,
        window_seconds: float = 300,
        block_seconds: float = 300,
        max_tracked: int = 100_000,
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self._clock = clock
        self._limit = failures
        self._window = window_seconds
        self._block = block_seconds
        self._max_tracked = max_tracked
        # Insertion order is last-activity order (entries are re-inserted when touched), so the
        # first entries are the ones to drop when full.
        self._failures: dict[str, deque[float]] = {}
        self._blocked_until: dict[str, float] = {}
        self._next_sweep = clock.timestamp() + min(window_seconds, block_seconds)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> InMemoryLoginGuard:
        return cls(
            clock,
            failures=settings.login_guard_failures,
            window_seconds=settings.login_guard_window_seconds,
            block_seconds=settings.login_guard_block_seconds,
        )

    async def check(self, ip: str) -> None:
        until = self._blocked_until.get(ip)
        if until is None:
            return
        now = self._clock.timestamp()
        if now < until:
            raise _blocked(until - now)
        del self._blocked_until[ip]

    async def record_failure(self, ip: str) -> None:
        now = self._clock.timestamp()
        self._sweep(now)
        # Only the latest `limit` failures can matter, so the deque never grows past that.
        recent = self._failures.pop(ip, None) or deque(maxlen=self._limit)
        recent.append(now)
        while recent and recent[0] <= now - self._window:
            recent.popleft()
        if len(recent) >= self._limit:
            self._blocked_until.pop(ip, None)
            self._blocked_until[ip] = now + self._block
            self._trim(self._blocked_until)
        else:
            self._failures[ip] = recent
            self._trim(self._failures)

    async def record_success(self, ip: str) -> None:
        return None

    def tracked(self) -> int:
        """How many addresses the guard holds state for (failures or blocks)."""
        return len(self._failures) + len(self._blocked_until)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(self._window, self._block)
        cutoff = now - self._window
        self._failures = {ip: times for ip, times in self._failures.items() if times and times[-1] > cutoff}
        self._blocked_until = {ip: until for ip, until in self._blocked_until.items() if until > now}

    def _trim(self, entries: dict[str, deque[float]] | dict[str, float]) -> None:
        while len(entries) > self._max_tracked:
            del entries[next(iter(entries))]


class SharedLoginGuard:
    """The guard on a `limits` storage (Redis in the cloud shape), shared by every process."""

    def __init__(
        self,
        storage: CounterStore,
        *,
        failures: int = 5,
        window_seconds: int = 300,
        block_seconds: int = 300,
        namespace: str = "cnop/login_guard",
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
        namespace: str = "cnop/login_account",
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
