"""The gateway's reverse proxy (the cloud shape): each routed request goes to its service over HTTP.

Why it is built so:

- **Pooled keep-alive HTTP** (`httpx2`), one pool per upstream, so a request costs no TCP
  handshake and one slow service cannot take another's connections.
- **Streaming both ways.** The answer is relayed chunk by chunk as it arrives (raw bytes, content
  encoding untouched), so an event stream passes through event by event and a large answer is
  never held whole. A request body streams too, unless it is small and declares its length:
  those (every API body in practice) are kept so that a retry can send them again.
- **Retries only where repeating is harmless**: GET, HEAD and OPTIONS, and POSTs that carry an
  `Idempotency-Key` header or a `client_order_id` in their JSON body (the service answers a
  repeat with the first result). A plain POST is sent once, whatever happens. A retry follows a
  transport error (connect error, reset, timeout) or a 502/503/504, after a short jittered wait.
- **A circuit breaker per upstream** (`cnop.gateway.breaker`): connect errors, timeouts and 5xx
  count as failures, 4xx never. Refused requests, and requests whose upstream could not answer,
  get 503 `service_unavailable` problem+json with `Retry-After`, and nothing about hosts, ports
  or exceptions.
- **One request id.** The id the gateway's request context chose goes upstream as
  `X-Request-ID`, so the gateway's and the service's log lines share it. The client address the
  gateway decided (see `TrustedProxies`) replaces `X-Forwarded-For`, so a service that trusts
  the gateway sees the real client and nothing a client wrote itself.
- **Client gone, upstream closed.** When the client disconnects, the upstream request is closed
  at once, so an abandoned event stream does not keep a service connection open.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Literal

import httpx2
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cnop.common.config import Settings
from cnop.common.exceptions import ServiceUnavailable
from cnop.common.logging import get_logger
from cnop.common.metrics import Metrics
from cnop.common.web.problems import http_error_response, request_id_of, scope_problem_response
from cnop.gateway.breaker import BreakerPolicy, CircuitBreaker, Monotonic
from cnop.gateway.upstreams import Route, RouteTable
from cnop.roles import ROUTES

Header = tuple[bytes, bytes]
Outcome = Literal["ok", "error", "timeout", "connect_error", "rejected", "abandoned"]

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded. `host` is the upstream's.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Replaced by the gateway's own values.
_REPLACED_REQUEST_HEADERS = frozenset({b"host", b"x-request-id", b"x-forwarded-for", b"x-forwarded-proto"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_RETRYABLE_STATUSES = frozenset({502, 503, 504})
_CLIENT_ORDER_ID = b'"client_order_id"'
_UNAVAILABLE_DETAIL = "The service is not answering right now; retry after the time in Retry-After."
_log = get_logger("cnop.gateway.proxy")


class ClientDisconnected(Exception):
    """The client went away while its request body was still arriving."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 2
    backoff_seconds: float = 0.05

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based): full jitter on a doubling base."""
        return random.uniform(0, self.backoff_seconds * 2 ** (attempt - 1))


def is_retryable(method: str, headers: Mapping[bytes, bytes], body: bytes | None) -> bool:
    """Whether a request may be sent again: safe methods, or POSTs a service deduplicates.

    `body` is None when the body streams through (it could not be sent again anyway).
    """
    if method in _SAFE_METHODS:
        return True
    if method != "POST" or body is None:
        return False
    if headers.get(b"idempotency-key"):
        return True
    return _names_client_order_id(body)


def _names_client_order_id(body: bytes) -> bool:
    if _CLIENT_ORDER_ID not in body:
        return False
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    value = document.get("client_order_id") if isinstance(document, dict) else None
    return isinstance(value, str) and bool(value)


class Upstream:
    """One service the gateway sends requests to: its base URL, connection pool and breaker."""

    def __init__(self, name: str, base_url: str, client: httpx2.AsyncClient, breaker: CircuitBreaker) -> None:
        self.name = name
        url = httpx2.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"upstream {name!r} needs an http(s) URL, got {base_url!r}")
        self.base_url = url
        self._base_path = url.raw_path.rstrip(b"/")
        self.client = client
        self.breaker = breaker

    def url_for(self, raw_path: bytes, query: bytes) -> httpx2.URL:
        target = self._base_path + raw_path + (b"?" + query if query else b"")
        return self.base_url.copy_with(raw_path=target)


class ReverseProxy:
    """ASGI app relaying routed paths to their upstreams; anything else goes to `fallback`."""

    def __init__(
        self,
        routes: RouteTable,
        upstreams: Mapping[str, Upstream],
        *,
        metrics: Metrics | None = None,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 2.0,
        replay_body_bytes: int = 65536,
        fallback: ASGIApp | None = None,
    ) -> None:
        missing = sorted(routes.upstreams - set(upstreams))
        if missing:
            raise ValueError(f"no URL for the upstreams {', '.join(missing)} (set CNOP_UPSTREAM_URLS)")
        self.routes = routes
        self.upstreams = dict(upstreams)
        self._metrics = metrics
        self._retry = retry or RetryPolicy()
        self._connect_timeout = connect_timeout
        self._replay_limit = replay_body_bytes
        self._fallback = fallback
        self._timeouts: dict[float | None, dict[str, float | None]] = {}
        if metrics is not None:
            metrics.watch_breakers(self.breaker_states)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        fallback: ASGIApp | None = None,
        monotonic: Monotonic = time.monotonic,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> ReverseProxy:
        routes = RouteTable.configured(ROUTES, settings.upstream_timeouts)
        policy = BreakerPolicy(
            window_seconds=settings.breaker_window_seconds,
            bucket_seconds=min(1.0, settings.breaker_window_seconds),
            min_failures=settings.breaker_min_failures,
            failure_ratio=settings.breaker_failure_ratio,
            open_seconds=settings.breaker_open_seconds,
            half_open_probes=settings.breaker_half_open_probes,
        )
        limits = httpx2.Limits(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=settings.upstream_max_keepalive_connections,
            keepalive_expiry=settings.upstream_keepalive_seconds,
        )
        on_transition = metrics.record_breaker_transition if metrics is not None else None
        upstreams = {
            name: Upstream(
                name,
                url,
                httpx2.AsyncClient(limits=limits, trust_env=False, transport=transport),
                CircuitBreaker(name, policy, monotonic=monotonic, on_transition=on_transition),
            )
            for name, url in settings.upstream_urls.items()
        }
        return cls(
            routes,
            upstreams,
            metrics=metrics,
            retry=RetryPolicy(settings.upstream_retries, settings.upstream_retry_backoff_seconds),
            connect_timeout=settings.upstream_connect_timeout_seconds,
            replay_body_bytes=settings.upstream_replay_body_bytes,
            fallback=fallback,
        )

    def breaker_states(self) -> list[tuple[str, int]]:
        """Each upstream's breaker state as its gauge value (0 closed, 1 half-open, 2 open)."""
        return [(name, upstream.breaker.state.gauge_value) for name, upstream in self.upstreams.items()]

    async def aclose(self) -> None:
        """Close every upstream's connection pool."""
        await asyncio.gather(*(u.client.aclose() for u in self.upstreams.values()))

    # --- the request path ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if self._fallback is not None:
                await self._fallback(scope, receive, send)
            return
        route = self.routes.match(scope["path"])
        if route is None:
            if self._fallback is not None:
                await self._fallback(scope, receive, send)
            else:
                await http_error_response(scope, 404, None, None)(scope, receive, send)
            return
        scope["route"] = route  # the metrics label: the route's prefix
        await self._forward(scope, receive, send, route, self.upstreams[route.upstream])

    async def _forward(self, scope: Scope, receive: Receive, send: Send, route: Route, upstream: Upstream) -> None:
        method: str = scope["method"]
        headers, by_name = self._request_headers(scope)
        declared = _content_length(by_name)
        body: bytes | None
        content: bytes | AsyncIterator[bytes]
        body_done = asyncio.Event()
        if b"transfer-encoding" in by_name or (declared is not None and declared > self._replay_limit):
            body = None
            content = _stream_body(receive, body_done)
        else:
            try:
                body = await _read_body(receive) if declared else b""
            except ClientDisconnected:
                return
            content = body
            body_done.set()
        retryable = body is not None and is_retryable(method, by_name, body)
        attempts = 1 + (self._retry.retries if retryable else 0)
        url = upstream.url_for(scope.get("raw_path") or scope["path"].encode("latin-1"), scope["query_string"])
        timeout = self._timeout(route.timeout)

        for attempt in range(1, attempts + 1):
            ticket = upstream.breaker.try_acquire()
            if ticket is None:
                self._count(upstream, "rejected")
                await self._unavailable(scope, receive, send, upstream.breaker.retry_after())
                return
            request = httpx2.Request(method, url, headers=headers, content=content, extensions={"timeout": timeout})
            started = time.perf_counter()
            try:
                response = await upstream.client.send(request, stream=True)
            except ClientDisconnected:
                ticket.release()
                self._count(upstream, "abandoned")
                return
            except httpx2.TransportError as exc:
                ticket.failed()
                outcome: Outcome = "timeout" if isinstance(exc, httpx2.TimeoutException) else "connect_error"
                self._count(upstream, outcome)
                _log.warning("upstream_failed", upstream=upstream.name, error=type(exc).__name__, attempt=attempt)
                if attempt < attempts:
                    await self._before_retry(upstream, attempt)
                    continue
                await self._unavailable(scope, receive, send, 1)
                return
            except BaseException:
                ticket.release()
                raise
            self._observe_head(upstream, response.status_code, time.perf_counter() - started)
            if response.status_code >= 500:
                ticket.failed()
            else:
                ticket.succeeded()
            if response.status_code in _RETRYABLE_STATUSES and attempt < attempts:
                await response.aclose()
                await self._before_retry(upstream, attempt)
                continue
            await self._relay(scope, receive, send, response, body_done, upstream)
            return

    def _request_headers(self, scope: Scope) -> tuple[list[Header], dict[bytes, bytes]]:
        """The headers to send upstream, and the client's headers by (lower-case) name."""
        by_name: dict[bytes, bytes] = {}
        connection_named: set[bytes] = set()
        for name, value in scope["headers"]:
            by_name.setdefault(name, value)
            if name == b"connection":
                connection_named.update(token.strip().lower() for token in value.split(b","))
        dropped = _HOP_BY_HOP | _REPLACED_REQUEST_HEADERS | connection_named
        headers = [(name, value) for name, value in scope["headers"] if name not in dropped]
        state = scope.get("state") or {}
        request_id = request_id_of(scope)
        if request_id:
            headers.append((b"x-request-id", request_id.encode("ascii")))
        client_ip = state.get("client_ip")
        if isinstance(client_ip, str) and client_ip != "unknown":
            headers.append((b"x-forwarded-for", client_ip.encode("latin-1")))
        headers.append((b"x-forwarded-proto", str(scope.get("scheme", "http")).encode("latin-1")))
        host = by_name.get(b"host")
        if host is not None:
            headers.append((b"x-forwarded-host", host))
        return headers, by_name

    def _timeout(self, read: float | None) -> dict[str, float | None]:
        cached = self._timeouts.get(read)
        if cached is None:
            cached = httpx2.Timeout(read, connect=self._connect_timeout, pool=self._connect_timeout).as_dict()
            self._timeouts[read] = cached
        return cached

    async def _before_retry(self, upstream: Upstream, attempt: int) -> None:
        if self._metrics is not None:
            self._metrics.upstream_retries.labels(upstream.name).inc()
        await asyncio.sleep(self._retry.delay(attempt))

    async def _relay(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        response: httpx2.Response,
        body_done: asyncio.Event,
        upstream: Upstream,
    ) -> None:
        """Send the upstream's answer to the client as it arrives; stop both ends if either goes away."""
        relay = asyncio.create_task(self._send_response(send, response, upstream))
        watch = asyncio.create_task(_wait_for_disconnect(receive, body_done))
        try:
            done, _ = await asyncio.wait({relay, watch}, return_when=asyncio.FIRST_COMPLETED)
            if relay not in done:
                relay.cancel()
                self._count(upstream, "abandoned")
            await asyncio.gather(relay, return_exceptions=True)
            if relay in done and relay.exception() is not None:
                raise relay.exception()  # type: ignore[misc]
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await response.aclose()

    async def _send_response(self, send: Send, response: httpx2.Response, upstream: Upstream) -> None:
        headers = _response_headers(response.headers.raw)
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        try:
            async for chunk in response.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx2.TransportError as exc:
            # Too late for a problem answer: leave the response unfinished, so the server drops
            # the connection and the client sees a broken answer rather than a short one.
            _log.warning("upstream_broke_mid_answer", upstream=upstream.name, error=type(exc).__name__)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _unavailable(self, scope: Scope, receive: Receive, send: Send, retry_after: int) -> None:
        response = scope_problem_response(
            scope,
            ServiceUnavailable.status,
            ServiceUnavailable.code,
            ServiceUnavailable.title,
            _UNAVAILABLE_DETAIL,
            headers={"Retry-After": str(max(1, retry_after))},
        )
        await response(scope, receive, send)

    def _count(self, upstream: Upstream, outcome: Outcome) -> None:
        if self._metrics is not None:
            self._metrics.upstream_requests.labels(upstream.name, outcome).inc()

    def _observe_head(self, upstream: Upstream, status: int, seconds: float) -> None:
        if self._metrics is not None:
            self._count(upstream, "error" if status >= 500 else "ok")
            self._metrics.upstream_duration.labels(upstream.name).observe(seconds)


def _content_length(headers: Mapping[bytes, bytes]) -> int | None:
    raw = headers.get(b"content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _response_headers(raw: list[Header]) -> list[Header]:
    connection_named: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            connection_named.update(token.strip().lower() for token in value.split(b","))
    dropped = _HOP_BY_HOP | connection_named
    return [(name.lower(), value) for name, value in raw if name.lower() not in dropped]


async def _read_body(receive: Receive) -> bytes:
    """The whole (small, length-declared) request body."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _stream_body(receive: Receive, done: asyncio.Event) -> AsyncIterator[bytes]:
    """The request body as it arrives, for bodies too big or too open-ended to keep."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            done.set()
            return


async def _wait_for_disconnect(receive: Receive, body_done: asyncio.Event) -> None:
    """Return when the client disconnects (listening only once its body has been read)."""
    await body_done.wait()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
