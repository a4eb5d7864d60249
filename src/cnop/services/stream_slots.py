"""Caps on concurrent event streams, per user and per client IP (past a cap: 429 `too_many_streams`).

A stream holds a connection, a task and two subscriptions for as long as the client wants, so an
unbounded number of them is a cheap way to exhaust a process. Counted in the process that holds
the streams (a stream lives in exactly one); `StreamSlots.response` wraps the streaming response
so the slot is freed however the stream ends (client gone, server stopping, error).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from cnop.common.exceptions import TooManyStreams


class StreamSlots:
    def __init__(self, per_user: int, per_ip: int) -> None:
        self.per_user = per_user
        self.per_ip = per_ip
        self._users: dict[str, int] = {}
        self._ips: dict[str, int] = {}

    def open_for(self, user: str | None = None, ip: str | None = None) -> int:
        """Streams open for `user` (or, if None, for `ip`)."""
        return self._users.get(user, 0) if user is not None else self._ips.get(ip or "", 0)

    def acquire(self, user: str | None, ip: str) -> None:
        """Take a slot for a new stream, or raise `TooManyStreams` (and take nothing)."""
        if user is not None and self._users.get(user, 0) >= self.per_user:
            raise TooManyStreams(
                f"At most {self.per_user} event streams may be open per user; close one first", retry_after=5
            )
        if self._ips.get(ip, 0) >= self.per_ip:
            raise TooManyStreams(
                f"At most {self.per_ip} event streams may be open per address; close one first", retry_after=5
            )
        if user is not None:
            self._users[user] = self._users.get(user, 0) + 1
        self._ips[ip] = self._ips.get(ip, 0) + 1

    def release(self, user: str | None, ip: str) -> None:
        if user is not None:
            _decrement(self._users, user)
        _decrement(self._ips, ip)

    def response(
        self,
        content: AsyncIterable[bytes],
        *,
        user: str | None,
        ip: str,
        media_type: str = "text/event-stream",
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> StreamingResponse:
        """A streaming response holding a slot (taken now; raises when none is free) until it ends.

        `on_close` runs once the response ends however it ends (also if it never started, and
        when no slot is free), for what the caller took before the stream began.
        """
        try:
            self.acquire(user, ip)
        except BaseException:
            if on_close is not None:
                on_close()
            raise
        return _SlotResponse(self, user, ip, content, media_type=media_type, headers=headers, on_close=on_close)


class _SlotResponse(StreamingResponse):
    def __init__(
        self,
        slots: StreamSlots,
        user: str | None,
        ip: str,
        content: AsyncIterable[bytes],
        *,
        media_type: str,
        headers: Mapping[str, str] | None,
        on_close: Callable[[], None] | None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._slots = slots
        self._user = user
        self._ip = ip
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.release(self._user, self._ip)
            if self._on_close is not None:
                self._on_close()


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
