"""The HTTP server layer of `cnop serve`: uvicorn with the limits it lacks, before the app runs.

uvicorn's httptools protocol reads a request head of any size and waits for it forever, and
accepts every connection it is offered; the app never sees such requests, so no middleware can
bound them. `EdgeHttpProtocol` is that protocol with four limits added (docs/decisions/0013):

- a request head (request line and headers) longer than `server_max_header_bytes` is refused as
  soon as the bound is passed, without reading the rest: 414 when the request line alone is too
  long, else 431;
- a head not complete within `server_header_timeout_seconds` of its first byte (or of the
  connection opening) is refused with 408, or closed silently if nothing was sent at all;
- at most `server_max_connections` open connections in all, and `server_max_connections_per_ip`
  from one peer address (trusted proxies exempt: they carry many clients); a connection past a
  cap is answered 503 and closed at once, so its file descriptor is freed;
- uvicorn's own proxy-header handling is off: which client a request is from is decided by the
  app alone (`gateway/client_ip.py`, from `CNOP_TRUSTED_PROXIES`).

Its refusals are problem+json (`code`, a fresh `request_id`, echoed as `X-Request-ID`) sent with
`Connection: close`; they carry no rate-limit headers, which the API contract allows for the
server layer. Everything else, and the speed of every accepted request, is uvicorn's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from cnop.common.config import Settings
from cnop.common.exceptions import CnopError, HeadersTooLarge, RequestTimeout, TooManyConnections, UriTooLong
from cnop.common.logging import get_logger
from cnop.common.web.problems import problem_body
from cnop.gateway.client_ip import TrustedProxies

_log = get_logger("cnop.server")

# A request line is "METHOD SP target": if the target accounts for nearly all the head received,
# the head is still in its request line.
_METHOD_ALLOWANCE = 16


@dataclass(frozen=True)
class EdgeLimits:
    """The server layer's bounds (from `Settings`, whose `server_*` fields document them)."""

    max_header_bytes: int = 16 * 1024
    header_timeout_seconds: float = 10.0
    max_connections: int = 1000
    max_connections_per_ip: int = 100

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(
            max_header_bytes=settings.server_max_header_bytes,
            header_timeout_seconds=settings.server_header_timeout_seconds,
            max_connections=settings.server_max_connections,
            max_connections_per_ip=settings.server_max_connections_per_ip,
        )


class ConnectionGate:
    """Counts open connections, in all and per peer address, and admits those within the caps."""

    def __init__(self, max_total: int, max_per_ip: int, proxies: TrustedProxies | None = None) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self._proxies = proxies
        self.total = 0
        self._per_ip: dict[str, int] = {}

    def admit(self, ip: str) -> TooManyConnections | None:
        """Count the connection and return None, or return why it is refused (and count nothing)."""
        if self.total >= self.max_total:
            return TooManyConnections("The server has too many open connections; retry shortly")
        held = self._per_ip.get(ip, 0)
        if held >= self.max_per_ip and not (self._proxies and self._proxies.trusts(ip)):
            return TooManyConnections("Too many open connections from this address; close some and retry")
        self.total += 1
        self._per_ip[ip] = held + 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        held = self._per_ip.get(ip, 0) - 1
        if held > 0:
            self._per_ip[ip] = held
        else:
            self._per_ip.pop(ip, None)


class _ThrottledLog:
    """One warning per kind of refusal per 10 s, with how many were refused since the last one."""

    def __init__(self, every_seconds: float = 10.0) -> None:
        self._every = every_seconds
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def refused(self, code: str, client: str) -> None:
        self._count[code] = self._count.get(code, 0) + 1
        now = time.monotonic()
        if now - self._last.get(code, -self._every) >= self._every:
            _log.warning("server_refused", code=code, client_ip=client, refused_since_last=self._count[code])
            self._last[code] = now
            self._count[code] = 0


_refusals = _ThrottledLog()


def refusal_bytes(error: CnopError, request_id: str, server_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete HTTP/1.1 response for a refusal: problem+json, `Connection: close`."""
    body = json.dumps(
        problem_body(request_id, error.status, error.code, error.title, error.detail), separators=(",", ":")
    ).encode()
    head = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n".encode("ascii")]
    head.extend(name + b": " + value + b"\r\n" for name, value in server_headers)
    head.append(b"content-type: application/problem+json\r\n")
    head.append(b"content-length: " + str(len(body)).encode("ascii") + b"\r\n")
    head.append(b"x-request-id: " + request_id.encode("ascii") + b"\r\n")
    head.append(b"cache-control: no-store\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n")
    return b"".join(head) + body


class EdgeConfig(uvicorn.Config):
    """uvicorn's configuration plus the edge limits and the one connection gate of this server."""

    def __init__(self, app: Any, *, limits: EdgeLimits, proxies: TrustedProxies | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("http", EdgeHttpProtocol)
        kwargs.setdefault("server_header", False)
        super().__init__(app, proxy_headers=False, forwarded_allow_ips="", ws="none", **kwargs)
        self.edge_limits = limits
        self.connection_gate = ConnectionGate(limits.max_connections, limits.max_connections_per_ip, proxies)


class EdgeHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded head size, a head-read timeout and connection caps."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits: EdgeLimits = getattr(config, "edge_limits", None) or EdgeLimits()
        self._gate: ConnectionGate | None = getattr(config, "connection_gate", None)
        self._max_head = limits.max_header_bytes
        self._head_timeout = limits.header_timeout_seconds
        self._head_open = True  # reading a request head (or waiting for one to start)
        self._head_bytes = 0  # bytes of the open head received so far
        self._heads_done = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._admitted: str | None = None

    # --- connection life ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ip = self.client[0] if self.client else "unknown"
        if self._gate is not None:
            refused = self._gate.admit(ip)
            if refused is not None:
                self._refuse(refused)
                return
            self._admitted = ip
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted is not None and self._gate is not None:
            self._gate.release(self._admitted)
            self._admitted = None
        self._disarm_head_timer()
        super().connection_lost(exc)

    # --- the head bound ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._head_open:
            super().data_received(data)
            return
        room = self._max_head - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # The bound is passed within this read: parse only what may still be head, then decide.
        heads_before = self._heads_done
        self._head_bytes = self._max_head
        super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self._heads_done == heads_before and self._head_open:
            self._refuse(self._oversized())
            return
        self.data_received(data[room:])

    def _oversized(self) -> CnopError:
        url = len(getattr(self, "url", b"") or b"")
        if url >= self._head_bytes - _METHOD_ALLOWANCE:
            return UriTooLong(f"The request target is longer than the server accepts ({self._max_head} bytes)")
        return HeadersTooLarge(f"The request head is larger than the server accepts ({self._max_head} bytes)")

    # --- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._heads_done += 1
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_open = True
        self._head_bytes = 0

    # --- the head timeout --------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._head_open:
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing was asked: nobody to answer
            return
        self._refuse(RequestTimeout(f"The request head was not received within {self._head_timeout:g} s"))

    # --- refusals ----------------------------------------------------------------------------

    def _refuse(self, error: CnopError) -> None:
        self._head_open = False
        self._disarm_head_timer()
        _refusals.refused(error.code, self.client[0] if self.client else "unknown")
        with contextlib.suppress(Exception):
            self.transport.write(refusal_bytes(error, os.urandom(16).hex(), self.server_state.default_headers))
        self.transport.close()


def raise_open_file_limit(connections: int, spare: int = 256) -> int:
    """Raise the soft limit on open files to fit `connections` and `spare`, up to the hard limit.

    Returns the number of connections that fit: a cap above what the process may open would let
    accept() fail with EMFILE before the cap is reached.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + spare
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return connections
    return max(1, min(connections, soft - spare))


def server_config(app: Any, settings: Settings, *, host: str, port: int, **kwargs: Any) -> EdgeConfig:
    """The configuration `cnop serve` runs uvicorn with (also used by the benchmark and tests)."""
    limits = EdgeLimits.from_settings(settings)
    fitting = raise_open_file_limit(limits.max_connections)
    if fitting < limits.max_connections:
        _log.warning("connection_cap_lowered", configured=limits.max_connections, effective=fitting)
        limits = EdgeLimits(
            max_header_bytes=limits.max_header_bytes,
            header_timeout_seconds=limits.header_timeout_seconds,
            max_connections=fitting,
            max_connections_per_ip=limits.max_connections_per_ip,
        )
    kwargs.setdefault("timeout_keep_alive", settings.server_keep_alive_seconds)
    return EdgeConfig(
        app, limits=limits, proxies=TrustedProxies(settings.trusted_proxies), host=host, port=port, **kwargs
    )


def serve(app: Any, settings: Settings, *, host: str, port: int) -> None:
    """Serve `app` until interrupted (what `cnop serve` runs)."""
    config = server_config(app, settings, host=host, port=port, log_config=None, access_log=False)
    uvicorn.Server(config).run()
