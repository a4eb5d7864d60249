"""The gateway's middleware: request context, security headers, metrics, CORS and rate limits.

All of it is plain ASGI (no `BaseHTTPMiddleware`): it runs on every request, so everything that
can be worked out once is worked out in the constructors. `install_middleware` stacks it, from
the outside in:

    RequestContextMiddleware   request id, client ip, security headers, access log
    MetricsMiddleware          Prometheus request count and latency by route template
    CORSMiddleware             only when `cors_origins` is set; outside the limiter, so that a
                               browser can read a 429
    RateLimitMiddleware        per-IP and per-user fixed windows, X-RateLimit-* headers, 429
    UnhandledErrorMiddleware   turns an unexpected exception into the generic 500 problem
    (FastAPI's exception handlers and the routes)

Because the request context is outermost and the error guard innermost, every response,
429s and 500s included, carries the request id, the security headers and the rate headers.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Protocol

import limits
import structlog
from fastapi import FastAPI
from limits.aio.storage import Storage as AsyncStorage
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cnop.common.clock import Clock, SystemClock
from cnop.common.config import Settings
from cnop.common.exceptions import RateLimited
from cnop.common.logging import get_logger
from cnop.common.metrics import UNMATCHED_ROUTE, Metrics
from cnop.gateway.problems import internal_error_response, log_unhandled, scope_problem_response

Header = tuple[bytes, bytes]
UserIdentifier = Callable[[Scope], str | Awaitable[str | None] | None]
"""Reads the user a request is made by (a verified token's subject) from its scope, or None."""

RATE_LIMIT_EXEMPT_PATHS = frozenset({"/health", "/health/ready", "/metrics"})
REQUEST_ID_HEADER = "X-Request-ID"
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After")

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_access_log = get_logger("cnop.access")
_log = get_logger("cnop.gateway")


# --- route templates --------------------------------------------------------------------------


def route_template(scope: Scope) -> str:
    """The template of the route that answered (`/api/v1/orders/{order_id}`), or `unmatched`.

    Read after the app ran. Starlette sets `scope["route"]` on a match (also on the partial match
    that answers 405). FastAPI 0.165 resolves included routers lazily and leaves that route's
    router-local path there, so the full template comes from the effective route context it
    keeps in `scope["fastapi"]`; if a FastAPI upgrade moves it, this falls back to the route.
    A route inside a mounted sub-application is labelled with its path inside the mount.
    """
    fastapi_scope = scope.get("fastapi")
    if fastapi_scope:
        context = fastapi_scope.get("effective_route_context")
        path = getattr(context, "path_format", None)
        if isinstance(path, str):
            return path
    route = scope.get("route")
    if route is None:
        return UNMATCHED_ROUTE
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE


# --- client address ---------------------------------------------------------------------------


def _parse_ip(text: str) -> IPv4Address | IPv6Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """Decides the client's address: the peer, or `X-Forwarded-For` when the peer is a trusted proxy."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks = tuple(ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())
        # Peers are few (the proxies themselves), so remembering answers makes the check free.
        self.trusts: Callable[[str], bool] = lru_cache(maxsize=4096)(self._trusts)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def _trusts(self, host: str) -> bool:
        address = _parse_ip(host)
        return address is not None and any(address in network for network in self._networks)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str:
        """Walk `X-Forwarded-For` from the right past trusted proxies; the first other hop is the client."""
        if peer is None:
            return "unknown"
        if not self._networks or forwarded_for is None or not self.trusts(peer):
            return peer
        client = peer
        for hop in reversed(forwarded_for.split(",")):
            address = _parse_ip(hop)
            if address is None:
                # A hop no proxy would write: stop at the last address a trusted proxy vouched for.
                return client
            client = str(address)
            if not self.trusts(client):
                return client
        return client


# --- request context and security headers -----------------------------------------------------

_SECURITY_HEADERS: tuple[Header, ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
_CSP = (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'")
# Swagger UI and ReDoc load their scripts and styles from jsDelivr and run an inline script.
_DOCS_CSP = (
    b"content-security-policy",
    b"default-src 'self'; "
    b"script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    b"style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    b"font-src 'self' https://fonts.gstatic.com; "
    b"img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    b"worker-src 'self' blob:; "
    b"frame-ancestors 'none'",
)
_NO_STORE = (b"cache-control", b"no-store")
_HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")


def _add_missing(headers: list[Header], extra: Sequence[Header]) -> None:
    """Append each of `extra` whose name the response did not set itself."""
    present = {name.lower() for name, _ in headers}
    headers.extend(header for header in extra if header[0] not in present)


def bind_request_user(request: Request, user: str) -> None:
    """Record who made the request, for the access log and every log line after this one."""
    request.state.user = user
    structlog.contextvars.bind_contextvars(user=user)


async def _answer_unhandled(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    log_unhandled(scope, exc)
    await internal_error_response(scope)(scope, receive, send)


class RequestContextMiddleware:
    """Request id, client ip, security headers and the access log line, for every HTTP request.

    - `X-Request-ID`: the client's if it matches `[A-Za-z0-9._:-]{1,128}`, else a new 32-hex id;
      in `scope["state"]["request_id"]`, bound in structlog's contextvars, echoed on the response.
    - Client ip (`scope["state"]["client_ip"]`): see `TrustedProxies`.
    - Security headers on every response, unless the response set its own: nosniff, DENY,
      no-referrer, a `default-src 'self'` CSP (widened for `/docs` and `/redoc` so that the
      interactive docs load), HSTS when the request came over https (directly, or per
      `X-Forwarded-Proto` from a trusted proxy), and `Cache-Control: no-store` under `/api/`.
    """

    def __init__(self, app: ASGIApp, settings: Settings, docs_paths: Sequence[str] = ("/docs", "/redoc")) -> None:
        self.app = app
        self._proxies = TrustedProxies(settings.trusted_proxies)
        self._docs_paths = tuple(docs_paths)
        self._api_headers = (*_SECURITY_HEADERS, _CSP, _NO_STORE)
        self._docs_headers = (*_SECURITY_HEADERS, _DOCS_CSP)
        self._other_headers = (*_SECURITY_HEADERS, _CSP)

    def _is_docs(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self._docs_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        raw_request_id: bytes | None = None
        forwarded_for: list[bytes] = []
        forwarded_proto: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                raw_request_id = raw_request_id or value
            elif name == b"x-forwarded-for":
                forwarded_for.append(value)
            elif name == b"x-forwarded-proto":
                forwarded_proto = value
        if raw_request_id is not None and _REQUEST_ID.fullmatch(raw_request_id):
            request_id = raw_request_id.decode("ascii")
        else:
            request_id = os.urandom(16).hex()

        client = scope.get("client")
        peer: str | None = client[0] if client else None
        https = scope.get("scheme") == "https"
        if self._proxies and peer is not None and self._proxies.trusts(peer):
            xff = b",".join(forwarded_for).decode("latin-1") if forwarded_for else None
            client_ip = self._proxies.client_ip(peer, xff)
            https = https or (forwarded_proto or b"").rsplit(b",", 1)[-1].strip().lower() == b"https"
        else:
            client_ip = peer or "unknown"

        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["client_ip"] = client_ip
        state["https"] = https  # the web app marks its cookies Secure on https requests
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)

        path: str = scope["path"]
        if path.startswith("/api/"):
            extra: tuple[Header, ...] = self._api_headers
        elif self._is_docs(path):
            extra = self._docs_headers
        else:
            extra = self._other_headers
        extra = (*extra, (b"x-request-id", request_id.encode("ascii")), *((_HSTS,) if https else ()))
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", ()))
                _add_missing(headers, extra)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            if response_started:
                raise
            await _answer_unhandled(scope, receive, send_with_headers, exc)
        finally:
            if _access_log.is_enabled_for(logging.INFO):
                _access_log.info(
                    "request",
                    method=scope["method"],
                    path=path,
                    route=route_template(scope),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    client_ip=client_ip,
                    user=state.get("user"),
                )
            structlog.contextvars.reset_contextvars(**tokens)
            if "user" in state:
                structlog.contextvars.unbind_contextvars("user")


class UnhandledErrorMiddleware:
    """Answers an exception no handler took with the generic 500 problem, logged with its traceback.

    Starlette would do the same from its outermost middleware, but then the 500 would miss every
    header the gateway adds; here, innermost, it passes back out through all of them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def watch(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if response_started:
                raise  # too late for a clean answer; the server closes the connection
            await _answer_unhandled(scope, receive, send, exc)


# --- metrics ----------------------------------------------------------------------------------


class MetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self._metrics.observe_request(scope["method"], route_template(scope), status, time.perf_counter() - started)


# --- rate limits ---------------------------------------------------------------------------


class CounterStore(Protocol):
    """Expiring counters: the part of `limits`' async storage API the gateway uses.

    Every `limits` async storage (`RedisStorage` in the cloud shape) satisfies it, and so does
    `MemoryCounters`.
    """

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Add `amount` and return the new count; a new counter expires `expiry` seconds from now."""
        ...

    async def get(self, key: str) -> int: ...

    async def get_expiry(self, key: str) -> float:
        """When the counter expires (epoch seconds)."""
        ...

    async def clear(self, key: str) -> None: ...


class MemoryCounters:
    """`CounterStore` for one process: O(1) per call, expired counters swept every `sweep_seconds`.

    Used instead of `limits.aio.storage.MemoryStorage`, which starts a task that scans every key
    on nearly every `incr`: measured here, that took the middleware from ~0.1 ms a request to
    ~0.4 ms with one client, and to ~4 ms with 20,000 clients in the window. At most `max_keys`
    counters are kept; past that the oldest are dropped.
    """

    def __init__(self, clock: Clock | None = None, *, max_keys: int = 1_000_000, sweep_seconds: float = 10.0) -> None:
        self._clock = clock or SystemClock()
        self._max_keys = max_keys
        self._sweep_seconds = sweep_seconds
        self._counters: dict[str, list[float]] = {}  # key -> [count, expires_at]
        self._next_sweep = self._clock.timestamp() + sweep_seconds

    def __len__(self) -> int:
        return len(self._counters)

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = self._clock.timestamp()
        if now >= self._next_sweep:
            self._sweep(now)
        counter = self._counters.get(key)
        if counter is None or counter[1] <= now:
            self._counters.pop(key, None)  # re-inserted at the end: dict order stays creation order
            counter = self._counters[key] = [0, now + expiry]
            if len(self._counters) > self._max_keys:
                self._evict(now)
        counter[0] += amount
        return int(counter[0])

    async def get(self, key: str) -> int:
        counter = self._counters.get(key)
        return int(counter[0]) if counter is not None and counter[1] > self._clock.timestamp() else 0

    async def get_expiry(self, key: str) -> float:
        now = self._clock.timestamp()
        counter = self._counters.get(key)
        return counter[1] if counter is not None and counter[1] > now else now

    async def clear(self, key: str) -> None:
        self._counters.pop(key, None)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self._sweep_seconds
        self._counters = {key: counter for key, counter in self._counters.items() if counter[1] > now}

    def _evict(self, now: float) -> None:
        self._sweep(now)
        while len(self._counters) > self._max_keys:
            del self._counters[next(iter(self._counters))]


def counter_store(settings: Settings, clock: Clock | None = None) -> CounterStore:
    """Counters for rate limits and the login guard: Redis when `redis_url` is set, else in-process."""
    if not settings.redis_url:
        return MemoryCounters(clock)
    try:
        storage = storage_from_string(f"async+{settings.redis_url}")
    except ConfigurationError as exc:
        raise RuntimeError(
            "CNOP_REDIS_URL is set but the Redis client `limits` needs is not installed "
            "(install `coredis`, or `redis` and pass implementation='redispy')"
        ) from exc
    if not isinstance(storage, AsyncStorage):  # pragma: no cover - the async+ scheme guarantees it
        raise RuntimeError(f"{settings.redis_url!r} did not give an async storage")
    return storage


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


# --- assembly ---------------------------------------------------------------------------------


def install_middleware(
    app: FastAPI,
    settings: Settings,
    metrics: Metrics | None = None,
    identify_user: UserIdentifier | None = None,
    *,
    rate_limit_storage: CounterStore | None = None,
) -> None:
    """Add the gateway's middleware to `app` in the order the module docstring shows.

    Rate limiting is skipped entirely (no counting and no X-RateLimit-* headers) when
    `rate_limit_enabled` is false; that breaks the API rule that every response carries the
    headers, so it is for benchmarks and trusted internal deployments. To keep the headers with
    no practical limit, leave it enabled and raise `rate_limit_per_ip`/`rate_limit_per_user`.
    Metrics are observed when `metrics` is given and `metrics_enabled` is true.
    """
    # add_middleware wraps what is already there, so add from the innermost outwards.
    app.add_middleware(UnhandledErrorMiddleware)
    if settings.rate_limit_enabled:
        app.add_middleware(
            RateLimitMiddleware, settings=settings, identify_user=identify_user, storage=rate_limit_storage
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, *RATE_LIMIT_HEADERS],
            max_age=600,
        )
    if metrics is not None and settings.metrics_enabled:
        app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, settings=settings)
