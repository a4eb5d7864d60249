"""Per-user events (order updates) for the Server-Sent Events stream, in process.

Each event has an id that increases per process; a client reconnecting with `Last-Event-ID`
gets every retained event after it. Retention is bounded per user (count and age), so a client
away longer than that window resumes from what is still kept.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from cnop.common.clock import Clock
from cnop.common.entities.order import Order, OrderResponse

RETAINED_PER_USER = 500
RETENTION_SECONDS = 300.0
QUEUE_SIZE = 256


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str
    data: Any
    at: float


class EventBus:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._ids = itertools.count(1)
        self._retained: dict[str, deque[Event]] = {}
        self._listeners: dict[str, set[asyncio.Queue[Event]]] = {}

    def publish(self, username: str, event_type: str, data: Any) -> Event:
        """Publish `data` in its wire form: an `Order` as the API's order object (decision 0008)."""
        if isinstance(data, Order):
            data = OrderResponse.of(data)
        payload = data.model_dump(mode="python") if isinstance(data, BaseModel) else data
        if isinstance(payload, dict):
            payload.pop("username", None)
        event = Event(next(self._ids), event_type, payload, self.clock.timestamp())
        kept = self._retained.setdefault(username, deque(maxlen=RETAINED_PER_USER))
        kept.append(event)
        for queue in self._listeners.get(username, ()):
            if queue.full():
                queue.get_nowait()  # a slow reader loses the oldest event, never blocks the publisher
            queue.put_nowait(event)
        return event

    def since(self, username: str, last_id: int) -> list[Event]:
        horizon = self.clock.timestamp() - RETENTION_SECONDS
        return [e for e in self._retained.get(username, ()) if e.id > last_id and e.at >= horizon]

    def listen(self, username: str) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._listeners.setdefault(username, set()).add(queue)
        return queue

    def unlisten(self, username: str, queue: asyncio.Queue[Event]) -> None:
        listeners = self._listeners.get(username)
        if listeners is not None:
            listeners.discard(queue)
            if not listeners:
                del self._listeners[username]


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
