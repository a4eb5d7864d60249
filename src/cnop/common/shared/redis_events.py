"""The event bus in Redis: one stream per user, readable and resumable from every process.

- Publish: `XADD {prefix}events:{username} MAXLEN ~ N * type .. data .. at ..`, then `XTRIM MINID ~`
  (the stream's own time minus the retention) and `PEXPIRE` (retention), in one Lua script, so a
  user's stream is bounded by count and age and vanishes once quiet. `publish` only queues the
  event in a bounded outbox; one sender task per process writes the outbox in pipelined batches,
  in order, and retries while Redis is down (the oldest events beyond the outbox's bound are
  dropped and counted). A trade never waits for Redis and never fails because of it.
- Read: one reader task per process runs `XREAD BLOCK` over the streams of every user with an
  open stream in this process, from each user's last seen id, and fans the entries out to the
  local listeners (one Redis connection per process, not one per open stream; decision 0020).
- Resume: `since(last_id)` is `XREVRANGE key + (last_id COUNT N`, filtered by age: the retained
  events after the id, whichever process issued it and whether or not this one restarted since.
- Redis down: `since` and `listen` raise `EventsUnavailable`; open listeners receive `None` (their
  streams end with a retry hint); the reader and the sender retry on their own with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from cnop.common.clock import Clock
from cnop.common.events import (
    RETAINED_PER_USER,
    RETENTION_SECONDS,
    Event,
    EventsUnavailable,
    Listener,
    Listeners,
    wire_payload,
)
from cnop.common.jsonio import dumps, loads
from cnop.common.logging import get_logger
from cnop.common.metrics import Metrics
from cnop.common.shared.redis import SharedRedis

_log = get_logger("cnop.events")

STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
OUTBOX_SIZE = 10_000
BATCH_SIZE = 200
# Below a listener's queue size, and the loop yields after each batch: a reader that keeps up
# never loses an event to a burst.
READ_COUNT = 100
BLOCK_SECONDS = 1.0
# `listen` and `since` first wait this long at most for this process's own outbox to be sent.
FLUSH_WAIT_SECONDS = 1.0
BACKOFF_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0)
# Keys live this much longer than the retention window (clock skew between processes).
TTL_MARGIN_SECONDS = 60.0

# KEYS[1] the stream; ARGV: max length, retention (ms), ttl (ms), type, data, at.
PUBLISH_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[4], 'data', ARGV[5], 'at', ARGV[6])
local ms = tonumber(string.match(id, '^(%d+)-'))
local minid = ms - tonumber(ARGV[2])
if minid > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', minid))
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return id
"""


def _background(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task of the bus's own, outside the request that happened to start it (its log context)."""
    return asyncio.get_running_loop().create_task(work, context=contextvars.Context())


def position_of(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)


@dataclass(frozen=True, slots=True)
class _Pending:
    username: str
    type: str
    data: str
    at: float


class EventCounters:
    """What went wrong with the bus (also `cnop_event_bus_problems_total` in `/metrics`)."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.metrics = metrics
        self.publish_failures = 0  # batches that Redis refused or did not answer (retried)
        self.dropped = 0  # events lost: the outbox overflowed while Redis was away
        self.read_failures = 0

    def count(self, kind: str) -> None:
        if kind == "publish_retry":
            self.publish_failures += 1
        elif kind == "dropped":
            self.dropped += 1
        else:
            self.read_failures += 1
        if self.metrics is not None:
            self.metrics.event_bus_problems.labels(kind).inc()


class RedisEventBus:
    def __init__(
        self,
        redis: SharedRedis,
        clock: Clock,
        *,
        retained_per_user: int = RETAINED_PER_USER,
        retention_seconds: float = RETENTION_SECONDS,
        block_seconds: float = BLOCK_SECONDS,
        outbox_size: int = OUTBOX_SIZE,
        metrics: Metrics | None = None,
    ) -> None:
        self.redis = redis
        self.clock = clock
        self.retained_per_user = retained_per_user
        self.retention_seconds = retention_seconds
        self.block_seconds = block_seconds
        self.counters = EventCounters(metrics)
        # Decoded replies (str), whose redis-py types are unions of bytes and str: read as Any.
        self._client: Any = redis.client
        self._script: Any = redis.client.register_script(PUBLISH_SCRIPT)
        self._outbox: deque[_Pending] = deque()
        self._outbox_size = outbox_size
        self._pending = asyncio.Event()
        self._progress = asyncio.Event()  # set after every batch sent (or given up)
        self._queued = 0  # events ever put in the outbox / ever written or dropped
        self._done = 0
        self._sender: asyncio.Task[None] | None = None
        self._listeners = Listeners()
        self._cursors: dict[str, str] = {}
        self._joined = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    def key(self, username: str) -> str:
        return self.redis.key("events", username)

    # --- publishing ---------------------------------------------------------------------------

    def publish(self, username: str, event_type: str, data: Any) -> None:
        try:
            if len(self._outbox) >= self._outbox_size:
                self._outbox.popleft()
                self._done += 1
                self.counters.count("dropped")
                _log.error("event_dropped", reason="outbox full", user=username)
            self._outbox.append(
                _Pending(username, event_type, dumps(wire_payload(data)).decode(), self.clock.timestamp())
            )
            self._pending.set()
            if self._sender is None or self._sender.done():
                self._sender = _background(self._send_forever())
        except Exception:
            _log.exception("event_publish_failed", user=username, type=event_type)

    async def _send_forever(self) -> None:
        failures = 0
        while True:
            if not self._outbox:
                if self._closed:
                    return
                self._pending.clear()
                await self._pending.wait()
                continue
            batch = [self._outbox[i] for i in range(min(BATCH_SIZE, len(self._outbox)))]
            try:
                await self._send(batch)
            except (RedisError, OSError) as exc:
                # Kept in the outbox and sent again: delivered late rather than lost. (If Redis
                # applied part of the batch before the connection broke, those may appear twice.)
                self.counters.count("publish_retry")
                _log.warning("event_publish_retry", error=type(exc).__name__, pending=len(self._outbox))
                if self._closed:
                    return
                await asyncio.sleep(BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)])
                failures += 1
                continue
            failures = 0
            for _ in batch:
                if self._outbox:
                    self._outbox.popleft()
                    self._done += 1
            self._progress.set()

    async def _flushed(self) -> None:
        """Wait (briefly) until what this process published so far is in Redis: read your writes."""
        target = self._queued
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_WAIT_SECONDS):
                while self._done < target and self._sender is not None and not self._sender.done():
                    self._progress.clear()
                    await self._progress.wait()

    async def _send(self, batch: list[_Pending]) -> None:
        retention_ms = int(self.retention_seconds * 1000)
        ttl_ms = int((self.retention_seconds + TTL_MARGIN_SECONDS) * 1000)
        async with self.redis.client.pipeline(transaction=False) as pipe:
            for item in batch:
                args = [self.retained_per_user, retention_ms, ttl_ms, item.type, item.data, repr(item.at)]
                await self._script(keys=[self.key(item.username)], args=args, client=pipe)
            await pipe.execute()

    # --- reading ------------------------------------------------------------------------------

    def _event(self, stream_id: str, fields: dict[str, str]) -> Event | None:
        """The entry as an event; None (logged, skipped) for one this bus did not write."""
        try:
            return Event(stream_id, fields["type"], loads(fields["data"]), float(fields["at"]), position_of(stream_id))
        except (KeyError, ValueError, TypeError):
            _log.error("event_unreadable", id=stream_id)
            return None

    async def since(self, username: str, last_id: str) -> list[Event]:
        if not STREAM_ID.fullmatch(last_id):
            return []
        await self._flushed()
        try:
            entries = await self._client.xrevrange(self.key(username), "+", f"({last_id}", count=self.retained_per_user)
        except (RedisError, OSError) as exc:
            raise EventsUnavailable(type(exc).__name__) from exc
        horizon = self.clock.timestamp() - self.retention_seconds
        events = [self._event(stream_id, fields) for stream_id, fields in reversed(entries)]
        return [e for e in events if e is not None and e.at >= horizon]

    async def listen(self, username: str) -> Listener:
        listener = Listener(username)
        if self._listeners.add(listener):
            await self._flushed()
            try:
                newest = await self._client.xrevrange(self.key(username), "+", "-", count=1)
            except (RedisError, OSError) as exc:
                self._listeners.remove(listener)
                raise EventsUnavailable(type(exc).__name__) from exc
            if self._listeners.has(username):  # (it may have left while we waited)
                self._cursors[username] = newest[0][0] if newest else "0-0"
        self._joined.set()
        if self._reader is None or self._reader.done():
            self._reader = _background(self._read_forever())
        return listener

    def unlisten(self, listener: Listener) -> None:
        if self._listeners.remove(listener):
            self._cursors.pop(listener.username, None)

    async def _read_forever(self) -> None:
        failures = 0
        while not self._closed:
            if not self._cursors:
                self._joined.clear()
                await self._joined.wait()
                continue
            users = {self.key(u): u for u in self._cursors}
            streams = {key: self._cursors[user] for key, user in users.items()}
            try:
                reply = await self._client.xread(
                    streams, count=READ_COUNT, block=max(1, int(self.block_seconds * 1000))
                )
            except (RedisError, OSError) as exc:
                self.counters.count("read")
                _log.warning("event_read_failed", error=type(exc).__name__, listeners=len(self._cursors))
                self._listeners.deliver_all(None)  # their streams end with a retry hint
                await asyncio.sleep(BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)])
                failures += 1
                continue
            failures = 0
            for key, entries in reply.items() if isinstance(reply, dict) else reply or ():
                user = users[key]
                for stream_id, fields in entries:
                    if user in self._cursors:
                        self._cursors[user] = stream_id
                    event = self._event(stream_id, fields)
                    if event is not None:
                        self._listeners.deliver(user, event)
            await asyncio.sleep(0)

    async def close(self) -> None:
        """Stop reading; send what is still in the outbox (for at most a few seconds)."""
        self._closed = True
        self._pending.set()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._sender is not None:
            try:
                async with asyncio.timeout(3.0):
                    await self._sender
            except TimeoutError:
                self._sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sender
                _log.warning("events_unsent_at_close", pending=len(self._outbox))
