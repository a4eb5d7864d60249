"""The cache-invalidation channel: "this changed, drop what you cached of it", to every process.

The port is `Invalidations`: `subscribe(topic, handler)` registers what a process does when an
entry is invalidated (the asset cache drops an asset; the token cache forgets a user's tokens),
`await publish(topic, key)` announces a change. `ALL` as the key means "drop everything of this
topic". Two implementations, picked once by the composition root:

- `LocalInvalidations`: one process; `publish` calls the handlers at once.
- `RedisInvalidations`: `publish` calls this process's handlers at once, then PUBLISHes the change
  on one Redis pub/sub channel (`{prefix}invalidate`); every other process's listener (`run`, a
  background task) calls its handlers when the message arrives (milliseconds). A process ignores
  its own messages. When Redis fails, publishing logs once and goes on (the store stays the
  truth: caches are short-lived, so a missed message costs at most a cache lifetime); the
  listener reconnects by itself and, because it may have missed messages while cut off, then
  invalidates everything (`ALL` on every topic) once.

Handlers are plain functions, called on the event loop; they must be quick and must not raise
(an exception is logged and the other handlers still run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

from cnop.common.logging import get_logger
from cnop.common.shared.redis import SharedRedis

_log = get_logger("cnop.shared.invalidation")

ALL = "*"
"""The key that invalidates every entry of a topic."""

#: Topics used by the system (a topic is any short string; these are the ones with subscribers).
ASSET = "asset"  # key: an asset id, or ALL (catalogue changes)
USER = "user"  # key: a username (password change: every token of the user)
TOKEN = "token"  # key: a token id (`jti`) (logout)

Handler = Callable[[str], None]


class Invalidations(Protocol):
    def subscribe(self, topic: str, handler: Handler) -> None:
        """Call `handler(key)` whenever `key` of `topic` is invalidated (by any process)."""
        ...

    async def publish(self, topic: str, key: str) -> None:
        """Invalidate `key` of `topic` here at once and in every other process as soon as it can."""
        ...

    async def run(self) -> None:
        """The background work that receives other processes' invalidations (runs until cancelled)."""
        ...

    @property
    def connected(self) -> bool:
        """Whether other processes' invalidations reach this one (always, for one process)."""
        ...


class _Handlers:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers[topic].append(handler)

    def topics(self) -> list[str]:
        return list(self._handlers)

    def dispatch(self, topic: str, key: str) -> None:
        for handler in self._handlers.get(topic, ()):
            try:
                handler(key)
            except Exception:
                _log.exception("invalidation_handler_failed", topic=topic, key=key)


class LocalInvalidations:
    """`Invalidations` for one process: the handlers run inside `publish`."""

    def __init__(self) -> None:
        self._handlers = _Handlers()

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers.subscribe(topic, handler)

    async def publish(self, topic: str, key: str) -> None:
        self._handlers.dispatch(topic, key)

    async def run(self) -> None:
        return None

    @property
    def connected(self) -> bool:
        return True


class RedisInvalidations:
    """`Invalidations` shared by every process through one Redis pub/sub channel (see the module)."""

    def __init__(self, redis: SharedRedis, *, retry_seconds: float = 0.2, max_retry_seconds: float = 2.0) -> None:
        self._redis = redis
        self._handlers = _Handlers()
        self.channel = redis.key("invalidate")
        # Tells this process's own messages apart (they were handled when published).
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._retry = retry_seconds
        self._max_retry = max_retry_seconds
        self._connected = asyncio.Event()
        self._publish_failing = False

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers.subscribe(topic, handler)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once the listener is subscribed (tests; start-up)."""
        await self._connected.wait()

    async def publish(self, topic: str, key: str) -> None:
        self._handlers.dispatch(topic, key)
        message = json.dumps({"topic": topic, "key": key, "origin": self.origin}, separators=(",", ":"))
        try:
            await self._redis.client.publish(self.channel, message)
        except Exception as exc:
            if not self._publish_failing:
                self._publish_failing = True
                _log.warning(
                    "invalidation_publish_failed",
                    topic=topic,
                    consequence="other processes drop the entry when their cache expires",
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )
            return
        if self._publish_failing:
            self._publish_failing = False
            _log.warning("invalidation_publish_restored")

    async def run(self) -> None:
        delay = self._retry
        first = True
        while True:
            pubsub = self._redis.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._connected.set()
                if not first:
                    _log.warning("invalidation_listener_restored", consequence="every cache entry dropped")
                    for topic in self._handlers.topics():
                        self._handlers.dispatch(topic, ALL)
                first = False
                delay = self._retry
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._receive(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._connected.is_set() or first:
                    _log.warning(
                        "invalidation_listener_disconnected",
                        retry_in_seconds=delay,
                        error=f"{type(exc).__name__}: {exc}"[:300],
                    )
                self._connected.clear()
                first = False
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(self._max_retry, delay * 2)

    def _receive(self, data: object) -> None:
        try:
            message = json.loads(data) if isinstance(data, str | bytes) else {}
            topic, key, origin = message["topic"], message["key"], message.get("origin")
        except (ValueError, TypeError, KeyError, AttributeError):
            _log.warning("invalidation_message_malformed")
            return
        if origin != self.origin and isinstance(topic, str) and isinstance(key, str):
            self._handlers.dispatch(topic, key)


def invalidations_for(redis: SharedRedis | None) -> Invalidations:
    """The channel for this process: Redis when configured, else in-process."""
    return RedisInvalidations(redis) if redis is not None else LocalInvalidations()
