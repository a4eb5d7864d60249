"""A Redis PING over a plain connection: is the shared-state Redis answering?

Written against the protocol (RESP) directly so that health checks and the `cnop_redis_up`
gauge need no client library and share no connection pool with the real work: a busy pool must
not make a healthy Redis look down. `redis://` and `rediss://` (TLS) URLs, with an optional
password (`redis://:PASSWORD@host:6379/0`) or user and password.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from urllib.parse import unquote, urlsplit

from cnop.common.metrics import Metrics


class RedisUnavailable(Exception):
    """Redis did not answer PING as it should."""


def _command(*parts: str) -> bytes:
    encoded = [part.encode("utf-8") for part in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded)


async def ping_redis(url: str, within_seconds: float = 2.0) -> None:
    """Return if the Redis at `url` answers PING with PONG within `within_seconds`; else raise."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("the Redis URL must be redis://HOST[:PORT] or rediss://HOST[:PORT]")
    tls = ssl.create_default_context() if parts.scheme == "rediss" else None
    try:
        async with asyncio.timeout(within_seconds):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 6379, ssl=tls)
            try:
                if parts.password is not None:
                    credentials = [unquote(parts.password)]
                    if parts.username:
                        credentials.insert(0, unquote(parts.username))
                    writer.write(_command("AUTH", *credentials))
                    if not (await reader.readline()).startswith(b"+OK"):
                        raise RedisUnavailable("authentication refused")
                writer.write(_command("PING"))
                await writer.drain()
                if await reader.readline() != b"+PONG\r\n":
                    raise RedisUnavailable("unexpected answer to PING")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        raise RedisUnavailable(f"no answer ({type(exc).__name__})") from exc


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
