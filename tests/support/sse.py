"""A user's event stream (`GET /api/v1/events`) read on a thread, for the multi-process tests.

    with EventStream(base_url, auth) as stream:          # connected (the first `retry:` line read)
        ...                                               # make something happen
        event = stream.wait_for(lambda e: e["event"] == "order.completed")

Each event is a dict of its fields (`id`, `event`, `data` parsed as JSON); comments, `retry:`
lines and events of other kinds are kept apart (`hints`). `Last-Event-ID` resumes with `last_event_id`.
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
    def __init__(self, base_url: str, headers: Mapping[str, str], *, last_event_id: str | None = None) -> None:
        self._headers = dict(headers)
        if last_event_id is not None:
            self._headers["Last-Event-ID"] = last_event_id
        self._client = httpx2.Client(base_url=base_url, timeout=httpx2.Timeout(30, read=None), trust_env=False)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._connected = threading.Event()
        self._closing = False
        self._response: httpx2.Response | None = None
        self.status: int | None = None
        self.events: list[dict[str, Any]] = []
        self.hints: list[str] = []
        self.ended = False
        self._thread = threading.Thread(target=self._read, daemon=True)

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
        self._closing = True
        with contextlib.suppress(Exception):
            if self._response is not None:
                self._response.close()
        with contextlib.suppress(Exception):
            self._client.close()
        self._thread.join(10)

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/api/v1/events", headers=self._headers) as response:
                self._response = response
                self.status = response.status_code
                if response.status_code != 200:
                    self._connected.set()
                    return
                current: dict[str, Any] = {}
                for line in response.iter_lines():
                    if line.startswith(":") or line.startswith("retry:"):
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
                            self._changed.notify_all()
                        current = {}
        except Exception:
            if not self._closing:
                raise
        finally:
            self._connected.set()
            with self._changed:
                self.ended = True
                self._changed.notify_all()

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
                    raise AssertionError(f"no such event in {deadline:g} s (ended: {self.ended}); got {kinds}")
                self._changed.wait(left)
