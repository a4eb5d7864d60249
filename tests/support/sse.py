"""A user's event stream (`GET /api/v1/events`) read on a thread, for the multi-process tests.

    with EventStream(base_url, auth) as stream:          # connected (the first `retry:` line read)
        ...                                               # make something happen
        event = stream.wait_for(lambda e: e["event"] == "order.completed")

Each event is a dict of its fields (`id`, `event`, `data` parsed as JSON); comments and `retry:`
lines are kept apart (`hints`). `last_event_id` sends `Last-Event-ID`. With `reconnect=True` it
behaves like a browser's `EventSource`: when the server ends the stream, it waits the last
`retry:` time and connects again with the id of the last event it received (`connections`
counts the connections made).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx2

CONNECT_SECONDS = 30.0


class EventStream:
    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        last_event_id: str | None = None,
        reconnect: bool = False,
    ) -> None:
        self._headers = dict(headers)
        self._last_id = last_event_id
        self._reconnect = reconnect
        self._client = httpx2.Client(base_url=base_url, timeout=httpx2.Timeout(30, read=None), trust_env=False)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._response: httpx2.Response | None = None
        self.status: int | None = None
        self.events: list[dict[str, Any]] = []
        self.hints: list[str] = []
        self.connections = 0
        self.ended = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EventStream:
        self._thread.start()
        if not self._connected.wait(CONNECT_SECONDS):
            self.close()
            raise AssertionError("the event stream did not answer")
        assert self.status == 200, self.status
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(Exception):
            if self._response is not None:
                self._response.close()
        with contextlib.suppress(Exception):
            self._client.close()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            retry_seconds = 2.0
            while not self._closing.is_set():
                retry_seconds = self._read_once(retry_seconds)
                if not self._reconnect or self.status != 200:
                    return
                self._closing.wait(min(retry_seconds, 10.0))
        except Exception:
            if not self._closing.is_set():
                raise
        finally:
            self._connected.set()
            with self._changed:
                self.ended = True
                self._changed.notify_all()

    def _read_once(self, retry_seconds: float) -> float:
        """One connection, until the server ends it; returns the retry time it asked for last."""
        headers = dict(self._headers)
        if self._last_id is not None:
            headers["Last-Event-ID"] = self._last_id
        with self._client.stream("GET", "/api/v1/events", headers=headers) as response:
            self._response = response
            self.status = response.status_code
            self.connections += 1
            if response.status_code != 200:
                return retry_seconds
            current: dict[str, Any] = {}
            for line in response.iter_lines():
                if line.startswith(":") or line.startswith("retry:"):
                    if line.startswith("retry:"):
                        retry_seconds = int(line.removeprefix("retry:").strip()) / 1000
                    with self._changed:
                        self.hints.append(line)
                    self._connected.set()
                    continue
                if line:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    current[name] = json.loads(value) if name == "data" else value
                    continue
                if current:
                    with self._changed:
                        self.events.append(current)
                        if "id" in current:
                            self._last_id = current["id"]
                        self._changed.notify_all()
                    current = {}
        return retry_seconds

    def order_events(self) -> list[dict[str, Any]]:
        """The order events so far (the ones with an id), in order."""
        with self._lock:
            return [e for e in self.events if "id" in e]

    def wait_for(self, matches: Callable[[dict[str, Any]], bool], deadline: float = 10.0) -> dict[str, Any]:
        """The first event so far or to come that `matches`; fails after `deadline` seconds."""
        end = time.monotonic() + deadline
        with self._changed:
            while True:
                for event in self.events:
                    if matches(event):
                        return event
                left = end - time.monotonic()
                if left <= 0 or self.ended:
                    kinds = [(e.get("event"), e.get("id")) for e in self.events]
                    raise AssertionError(
                        f"no such event in {deadline:g} s (ended: {self.ended}, hints: {self.hints}); got {kinds}"
                    )
                self._changed.wait(left)
