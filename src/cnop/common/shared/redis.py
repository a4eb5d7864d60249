"""The one Redis client factory, the key prefix, and the start-up and health checks.

Every Redis implementation of a shared-state port takes a `SharedRedis` from the composition
root instead of making its own client:

    shared = open_redis(settings)          # None when CNOP_REDIS_URL is unset
    await shared.client.set(shared.key("lease", "prices"), token, px=5000)

- URLs: `redis://HOST[:PORT][/DB]`, `rediss://` for TLS (verified against the system trust store,
  or `CNOP_REDIS_TLS_CA_FILE`), `redis://:PASSWORD@HOST` or `redis://USER:PASSWORD@HOST` for an
  ACL user. The password may instead come from `CNOP_REDIS_PASSWORD` (a Kubernetes Secret), used
  when the URL has none: `connection_url(settings)` is the URL every client is made from. The
  password never reaches a log: `redacted(url)` hides it.
- Keys: `shared.key("rl", "ip", "1.2.3.4")` is `{CNOP_REDIS_PREFIX}rl:ip:1.2.3.4`; the prefix
  (default `cnop:`) lets two deployments share one Redis. Parts are joined with `:` as they are,
  so the fixed parts go first and a free-form part (an IP, a username) last.
- Timeouts: connect and per-command timeouts from settings, so a Redis that stalls fails a call
  in seconds (and the caller falls back) instead of hanging a request.
- `ping_redis(url)` opens its own short connection (health checks must not queue behind a busy
  pool, and a dead pool must not make a live Redis look down); `watch_redis` keeps the
  `cnop_redis_up` gauge current; `ping_or_exit(settings)` is the fail-fast start-up check.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, RedisError

from cnop.common.config import Settings
from cnop.common.health import CheckFailed, HealthCheck
from cnop.common.metrics import Metrics

#: The exit code of `cnop serve` (any role) when Redis is configured but does not answer.
EXIT_REDIS_UNAVAILABLE = 3


class RedisUnavailable(Exception):
    """Redis did not answer as it should (down, refused the password, or timed out)."""


def redacted(url: str) -> str:
    """`url` with its password replaced by `***` (for logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def connection_url(settings: Settings) -> str | None:
    """`CNOP_REDIS_URL` with `CNOP_REDIS_PASSWORD` applied (when the URL has no password), or None.

    A user named in the URL (`rediss://cnop@HOST`, an ACL user) is kept; a password in the URL wins.
    """
    url = settings.redis_url
    if not url or settings.redis_password is None:
        return url
    parts = urlsplit(url)
    if parts.password is not None or not parts.hostname:
        return url
    password = quote(settings.redis_password.get_secret_value(), safe="")
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query, parts.fragment))


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"CNOP_REDIS_URL must be redis://HOST[:PORT][/DB] or rediss://..., not {redacted(url)!r}")


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `Redis.from_url` (shared by every client this project makes)."""
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout_seconds,
        "socket_timeout": settings.redis_socket_timeout_seconds,
        "max_connections": settings.redis_max_connections,
        # A pooled connection idle this long is PINGed before use, so one the server (or a
        # failover) closed is replaced instead of failing the next command.
        "health_check_interval": 30,
        "client_name": "cnop",
        # A pooled connection that died with the server (restart, failover) fails its next command
        # with a ConnectionError: retried on a fresh connection, twice at most, quickly. Timeouts
        # are not retried (the command may have run: an increment would count twice).
        "retry": Retry(
            ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2, supported_errors=(ConnectionError,)
        ),
    }
    if settings.redis_url and settings.redis_url.startswith("rediss://") and settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.redis_tls_ca_file
    return options


@dataclass(frozen=True, slots=True)
class SharedRedis:
    """A Redis client (a connection pool; asyncio; hiredis parser) and the deployment's key prefix."""

    client: Redis
    prefix: str
    url: str

    def key(self, *parts: str | int) -> str:
        """The full key for `parts`: the prefix, then the parts joined with `:`."""
        if not parts:
            raise ValueError("a key needs at least one part")
        return self.prefix + ":".join(str(part) for part in parts)

    async def ping(self) -> None:
        """PING on a fresh connection (see the module); raise `RedisUnavailable` on any failure."""
        await ping_redis(self.url)

    async def close(self) -> None:
        await self.client.aclose()


def make_client(settings: Settings, *, decode_responses: bool = True) -> Redis:
    """A new client for `settings.redis_url` (use `open_redis` unless a second pool is really needed)."""
    url = connection_url(settings)
    if not url:
        raise ValueError("CNOP_REDIS_URL is not set")
    _check_url(url)
    return Redis.from_url(url, decode_responses=decode_responses, **client_options(settings))


def open_redis(settings: Settings) -> SharedRedis | None:
    """The process's `SharedRedis` (strings in, strings out), or None without `CNOP_REDIS_URL`.

    Connections are made lazily, on the first command: building the container never blocks.
    """
    url = connection_url(settings)
    if not url:
        return None
    return SharedRedis(make_client(settings), settings.redis_prefix, url)


async def ping_redis(url: str, within_seconds: float = 2.0) -> None:
    """Return if the Redis at `url` answers PING within `within_seconds`; else raise `RedisUnavailable`.

    A malformed URL raises `ValueError`.
    """
    _check_url(url)
    client = Redis.from_url(
        url,
        single_connection_client=True,
        socket_connect_timeout=within_seconds,
        socket_timeout=within_seconds,
        retry_on_timeout=False,
    )
    try:
        async with asyncio.timeout(within_seconds):
            if not await client.ping():
                raise RedisUnavailable("unexpected answer to PING")
    except RedisError as exc:
        raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
    except (OSError, TimeoutError) as exc:
        raise RedisUnavailable(f"no answer ({type(exc).__name__})") from exc
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()


async def watch_redis(url: str, metrics: Metrics, every_seconds: float = 5.0) -> None:
    """Keep `cnop_redis_up` current: ping every few seconds until cancelled."""
    while True:
        try:
            await ping_redis(url)
        except (RedisUnavailable, ValueError):
            metrics.redis_up.set(0)
        else:
            metrics.redis_up.set(1)
        await asyncio.sleep(every_seconds)


def redis_health_probe(url: str, listening: Callable[[], bool] | None = None) -> Callable[[], Awaitable[None]]:
    """A health check: passes while Redis answers PING (on a connection of its own) and, when
    `listening` is given, while this process's subscriptions (cache invalidation) are live."""

    async def check() -> None:
        try:
            await ping_redis(url)
        except (RedisUnavailable, ValueError) as exc:
            raise CheckFailed("Redis does not answer: limits count per process, caches expire by age") from exc
        if listening is not None and not listening():
            raise CheckFailed("Redis answers, the invalidation listener is reconnecting")

    return check


def add_redis_health(health: HealthCheck, settings: Settings, listening: Callable[[], bool] | None = None) -> None:
    """Name Redis in `/health` (down: `degraded`) and `/health/ready` (shown, not required), when set."""
    url = connection_url(settings)
    if url:
        probe = redis_health_probe(url, listening)
        health.add("redis", probe, critical=False, readiness=True, required=False)


def startup_problem(settings: Settings) -> str | None:
    """Why this process must not start with the configured Redis, or None (also when none is set)."""
    url = connection_url(settings)
    if not url:
        return None
    try:
        asyncio.run(ping_redis(url, settings.redis_startup_timeout_seconds))
    except ValueError as exc:
        return str(exc)
    except RedisUnavailable as exc:
        return (
            f"CNOP_REDIS_URL is set to {redacted(url)} but Redis does not answer ({exc}); "
            "start Redis, fix the URL or its password (in the URL or CNOP_REDIS_PASSWORD), "
            "or unset CNOP_REDIS_URL to run without shared state"
        )
    return None


def ping_or_exit(settings: Settings) -> None:
    """The start-up check of `cnop serve` (every role): exit `EXIT_REDIS_UNAVAILABLE` with a clear message."""
    problem = startup_problem(settings)
    if problem is not None:
        print(f"cnop: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_REDIS_UNAVAILABLE)
