"""Per-IP and per-user fixed-window rate limits, the X-RateLimit-* headers and the 429."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Awaitable, Callable, Iterable

import limits
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cnop.common.clock import Clock, SystemClock
from cnop.common.config import Settings
from cnop.common.counters import CounterStore, counter_store
from cnop.common.exceptions import RateLimited
from cnop.common.logging import get_logger
from cnop.common.web.problems import scope_problem_response

Header = tuple[bytes, bytes]
UserIdentifier = Callable[[Scope], str | Awaitable[str | None] | None]
"""Reads the user a request is made by (a verified token's subject) from its scope, or None."""

RATE_LIMIT_EXEMPT_PATHS = frozenset({"/health", "/health/ready", "/metrics"})
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After")

_log = get_logger("cnop.gateway")


class _Window:
    """One configured limit (`600/minute`) for one kind of identity (ip or user)."""

    __slots__ = ("amount", "expiry", "item", "kind", "limit_header", "prefix", "suffix")

    def __init__(self, kind: str, spec: str) -> None:
        self.kind = kind
        self.item = limits.parse(spec)
        self.amount = self.item.amount
        self.expiry = self.item.get_expiry()
        self.limit_header = str(self.amount).encode("ascii")
        # The key `limits` would use (`item.key_for(kind, identity)`), assembled without its overhead.
        self.prefix, self.suffix = self.item.key_for(kind, "\0").split("\0")

    def key(self, identity: str) -> str:
        return self.prefix + identity + self.suffix


class _Usage:
    __slots__ = ("count", "reset", "window")

    def __init__(self, window: _Window, count: int, reset: float) -> None:
        self.window = window
        self.count = count
        self.reset = reset

    @property
    def remaining(self) -> int:
        return max(0, self.window.amount - self.count)

    @property
    def exceeded(self) -> bool:
        return self.count > self.window.amount

    def headers(self) -> list[Header]:
        return [
            (b"x-ratelimit-limit", self.window.limit_header),
            (b"x-ratelimit-remaining", str(self.remaining).encode("ascii")),
            (b"x-ratelimit-reset", str(math.ceil(self.reset)).encode("ascii")),
        ]


class RateLimitMiddleware:
    """Per-IP limit on every request, per-user limit on requests `identify_user` attributes to a user.

    Fixed windows, counted as `limits`' `FixedWindowRateLimiter` counts them (one `incr`; allowed
    while the count is within the limit) plus one `get_expiry` for the Reset header: O(1) time
    and one counter per key, where a moving window stores and scans a timestamp per request in
    the window. The price: a client can fit up to twice its limit across a window boundary,
    which is acceptable for abuse protection.

    Every response gets `X-RateLimit-Limit/Remaining/Reset` (Reset in epoch seconds) for the
    tighter window. Over a limit the app is not called: 429 `rate_limited` with `Retry-After`.
    `RATE_LIMIT_EXEMPT_PATHS` are never counted or refused but still get the headers (of the IP
    window, read without counting). If the counter store fails, requests go through without the
    headers and the failure is logged: a Redis outage must not become an API outage.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        identify_user: UserIdentifier | None = None,
        storage: CounterStore | None = None,
        exempt_paths: Iterable[str] = RATE_LIMIT_EXEMPT_PATHS,
        clock: Clock | None = None,
    ) -> None:
        self.app = app
        self._identify_user = identify_user
        self._clock = clock or SystemClock()
        self._storage = storage if storage is not None else counter_store(settings, self._clock)
        self._ip = _Window("ip", settings.rate_limit_per_ip)
        self._user = _Window("user", settings.rate_limit_per_user)
        self._exempt = frozenset(exempt_paths)
        self._last_logged: dict[str, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exempt = scope["path"] in self._exempt
        try:
            usages = await self._count(scope, exempt)
        except Exception:
            self._log_throttled("rate_limit_storage_failed")
            await self.app(scope, receive, send)
            return

        exceeded = [] if exempt else [u for u in usages if u.exceeded]
        if exceeded:
            # Wait for the window that frees up last: before then the request would fail again.
            usage = max(exceeded, key=lambda u: u.reset)
            retry_after = max(1, math.ceil(usage.reset - self._clock.timestamp()))
            response = scope_problem_response(
                scope,
                RateLimited.status,
                RateLimited.code,
                RateLimited.title,
                f"Rate limit of {usage.window.item} per {usage.window.kind} exceeded; retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
            response.raw_headers.extend(usage.headers())
            await response(scope, receive, send)
            return

        rate_headers = min(usages, key=lambda u: u.remaining).headers()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *rate_headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _count(self, scope: Scope, exempt: bool) -> list[_Usage]:
        state = scope.get("state") or {}
        client = scope.get("client")
        ip = state.get("client_ip") or (client[0] if client else "unknown")
        if exempt:
            return [await self._peek(self._ip, ip)]
        usages = [await self._hit(self._ip, ip)]
        if usages[0].exceeded or self._identify_user is None:
            return usages
        try:
            user = self._identify_user(scope)
            if inspect.isawaitable(user):
                user = await user
        except Exception:
            # A bug in the identifier must not turn into 500s or switch off the IP limit.
            self._log_throttled("identify_user_failed")
            user = None
        if user:
            usages.append(await self._hit(self._user, user))
        return usages

    async def _hit(self, window: _Window, identity: str) -> _Usage:
        key = window.key(identity)
        count = await self._storage.incr(key, window.expiry)
        return _Usage(window, count, await self._storage.get_expiry(key))

    async def _peek(self, window: _Window, identity: str) -> _Usage:
        key = window.key(identity)
        count = await self._storage.get(key)
        reset = await self._storage.get_expiry(key) if count else self._clock.timestamp() + window.expiry
        return _Usage(window, count, reset)

    def _log_throttled(self, event: str) -> None:
        """Log the current exception, at most once per 10 s per event: an outage must not flood the log."""
        now = time.monotonic()
        if now - self._last_logged.get(event, -math.inf) >= 10.0:
            self._last_logged[event] = now
            _log.exception(event)
