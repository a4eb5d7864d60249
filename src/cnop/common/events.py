"""Per-user events (order updates) for the Server-Sent Events stream: the event bus port.

A service publishes `(username, type, data)`; the user's `GET /api/v1/events` stream listens,
and a client reconnecting with `Last-Event-ID` first gets every retained event after that id.
Retention is bounded per user, by count and by age, so a client away longer than the window
resumes from what is still kept.

Two implementations pass the same conformance tests (`tests/conformance/test_event_bus.py`):
- `InProcessEventBus` (the local shape): ids are integers increasing per process (`"17"` on the
  wire); events live as long as the process.
- `RedisEventBus` (`cnop.common.shared.redis_events`, chosen by `CNOP_REDIS_URL`): a Redis
  stream per user, ids are the stream ids (`"1733212345678-0"`), so any process can serve the
  stream and resume it, also after a restart (decision 0020).

Publishing never blocks and never raises: the trade that publishes is already committed, and a
lost notification must not turn it into an error. A listener whose bus loses its feed (Redis
down) receives `None`, and the stream ends with a retry hint so the client comes back later.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from cnop.common.clock import Clock
from cnop.common.entities.order import Order, facts_wire, order_facts, order_wire

RETAINED_PER_USER = 500
RETENTION_SECONDS = 300.0
QUEUE_SIZE = 256
SWEEP_EVERY = 1000


class EventsUnavailable(Exception):
    """The bus cannot read events now (its Redis is down): end the stream with a retry hint."""


_UNSET: Any = object()


class Event:
    """One event. `id` is its wire form; `position` orders events of one user's stream.

    `data` is the payload in its wire form. `Event.later(...)` makes an event whose wire form is
    written the first time `data` is read, from what was published (an order's `order_facts`:
    values that never change): the local shape's bus keeps every event for replay, but most are
    never read, so their payload is not written for nobody (decision 0029).
    """

    __slots__ = ("_data", "_render", "_source", "at", "id", "position", "type")

    def __init__(self, id: str, type: str, data: Any, at: float, position: tuple[int, int]) -> None:
        self.id = id
        self.type = type
        self._data = data
        self._source: Any = _UNSET
        self._render: Callable[[Any], Any] | None = None
        self.at = at
        self.position = position

    @classmethod
    def later(
        cls, id: str, type: str, source: Any, render: Callable[[Any], Any], at: float, position: tuple[int, int]
    ) -> Event:
        """An event whose `data` is `render(source)`, written when first read."""
        event = cls(id, type, None, at, position)
        event._source, event._render = source, render
        return event

    @property
    def data(self) -> Any:
        if self._render is not None:
            self._data = self._render(self._source)
            self._source, self._render = _UNSET, None
        return self._data

    def _fields(self) -> tuple[Any, ...]:
        return (self.id, self.type, self.data, self.at, self.position)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((self.id, self.type, self.at, self.position))

    def __repr__(self) -> str:
        fields = f"id={self.id!r}, type={self.type!r}, data={self.data!r}, at={self.at!r}, position={self.position!r}"
        return f"Event({fields})"


@dataclass(eq=False, slots=True)
class Listener:
    """One stream's subscription: events as they are published; `None` when the feed is lost."""

    username: str
    queue: asyncio.Queue[Event | None] = field(default_factory=lambda: asyncio.Queue(maxsize=QUEUE_SIZE))

    def offer(self, item: Event | None) -> None:
        """Queue `item`; a slow reader loses its oldest event, the publisher never waits."""
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(item)


class EventBus(Protocol):
    def publish(self, username: str, event_type: str, data: Any) -> None:
        """Publish `data` (an `Order` travels as the API's order object); never blocks or raises."""
        ...

    async def since(self, username: str, last_id: str) -> list[Event]:
        """The retained events after `last_id` (a wire id), oldest first.

        An id that is not one of this bus's (another format) is answered with no events: the
        stream then starts from now, as for a client without `Last-Event-ID`. Raises
        `EventsUnavailable` when the events cannot be read now.
        """
        ...

    async def listen(self, username: str) -> Listener:
        """Subscribe to `username`'s events published from now on (or raise `EventsUnavailable`)."""
        ...

    def unlisten(self, listener: Listener) -> None: ...

    async def close(self) -> None:
        """Stop background work (deliver what is still pending, within a bounded time)."""
        ...


def wire_payload(data: Any) -> Any:
    """An event's data in its wire form: an `Order` as the API's order object (decision 0008)."""
    if isinstance(data, Order):
        return order_wire(data)
    payload = data.model_dump(mode="python") if isinstance(data, BaseModel) else data
    if isinstance(payload, dict):
        payload.pop("username", None)
    return payload


class Listeners:
    """The listeners of each user in one process, and the fan-out to them."""

    def __init__(self) -> None:
        self._by_user: dict[str, set[Listener]] = {}

    def add(self, listener: Listener) -> bool:
        """Register `listener`; True if it is its user's first."""
        group = self._by_user.setdefault(listener.username, set())
        group.add(listener)
        return len(group) == 1

    def remove(self, listener: Listener) -> bool:
        """Unregister `listener`; True if its user has none left."""
        group = self._by_user.get(listener.username)
        if group is None:
            return False
        group.discard(listener)
        if group:
            return False
        del self._by_user[listener.username]
        return True

    def has(self, username: str) -> bool:
        return username in self._by_user

    def users(self) -> list[str]:
        return list(self._by_user)

    def deliver(self, username: str, item: Event | None) -> None:
        for listener in tuple(self._by_user.get(username, ())):
            listener.offer(item)

    def deliver_all(self, item: Event | None) -> None:
        for username in self.users():
            self.deliver(username, item)


class InProcessEventBus:
    """The local shape's bus: events in memory, ids increasing per process."""

    def __init__(
        self, clock: Clock, *, retained_per_user: int = RETAINED_PER_USER, retention_seconds: float = RETENTION_SECONDS
    ) -> None:
        self.clock = clock
        self.retained_per_user = retained_per_user
        self.retention_seconds = retention_seconds
        self._ids = itertools.count(1)
        self._published = 0
        self._retained: dict[str, deque[Event]] = {}
        self._listeners = Listeners()

    def publish(self, username: str, event_type: str, data: Any) -> None:
        number = next(self._ids)
        at, position = self.clock.timestamp(), (number, 0)
        if isinstance(data, Order):  # kept as its facts: less memory than the order or its wire form
            event = Event.later(str(number), event_type, order_facts(data), facts_wire, at, position)
        else:
            event = Event(str(number), event_type, wire_payload(data), at, position)
        kept = self._retained.setdefault(username, deque(maxlen=self.retained_per_user))
        kept.append(event)
        self._drop_expired(username, kept)
        self._listeners.deliver(username, event)

    def _drop_expired(self, username: str, kept: deque[Event]) -> None:
        horizon = self.clock.timestamp() - self.retention_seconds
        while kept and kept[0].at < horizon:
            kept.popleft()
        self._published += 1
        if self._published % SWEEP_EVERY == 0:
            # Users who went quiet keep nothing once their last event ages out (memory stays bounded).
            for quiet in [u for u, events in self._retained.items() if not events or events[-1].at < horizon]:
                del self._retained[quiet]

    async def since(self, username: str, last_id: str) -> list[Event]:
        if not last_id.isdigit() or len(last_id) > 19:
            return []
        after = int(last_id)
        horizon = self.clock.timestamp() - self.retention_seconds
        return [e for e in self._retained.get(username, ()) if e.position[0] > after and e.at >= horizon]

    async def listen(self, username: str) -> Listener:
        listener = Listener(username)
        self._listeners.add(listener)
        return listener

    def unlisten(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    async def close(self) -> None:
        return None


class StreamConnections:
    """Open streaming connections per client IP, capped (one process; in memory)."""

    def __init__(self, per_ip: int) -> None:
        self.per_ip = per_ip
        self._open: dict[str, int] = {}

    def acquire(self, ip: str) -> bool:
        if self._open.get(ip, 0) >= self.per_ip:
            return False
        self._open[ip] = self._open.get(ip, 0) + 1
        return True

    def release(self, ip: str) -> None:
        left = self._open.get(ip, 0) - 1
        if left > 0:
            self._open[ip] = left
        else:
            self._open.pop(ip, None)
