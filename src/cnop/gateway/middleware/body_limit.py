"""Request bodies bounded per route: a larger one is 413 `body_too_large` before it is read or parsed.

A declared `Content-Length` over the bound is refused without reading a byte of the body; a
chunked body is read only up to the bound (then refused) and handed to the app whole otherwise,
so no endpoint ever parses more than the bound. Refusals carry `Connection: close`: the server
then drops the rest of the body instead of reading it to keep the connection.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cnop.common.exceptions import BodyTooLarge
from cnop.common.web.problems import scope_problem_response


class BodyLimitMiddleware:
    """Refuses bodies over `default_limit` bytes, or over the limit of the longest matching path prefix."""

    def __init__(self, app: ASGIApp, default_limit: int, limits_by_prefix: Sequence[tuple[str, int]] = ()) -> None:
        self.app = app
        self._default = default_limit
        self._by_prefix = tuple(sorted(limits_by_prefix, key=lambda item: len(item[0]), reverse=True))

    def limit_for(self, path: str) -> int:
        for prefix, limit in self._by_prefix:
            if path.startswith(prefix):
                return limit
        return self._default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        limit = self.limit_for(scope["path"])
        if declared is not None and not chunked:
            # The server has already refused a malformed length; 19 digits would pass 2**63.
            if len(declared) > 18 or (declared.isdigit() and int(declared) > limit):
                await self._refuse(scope, receive, send, limit)
                return
            await self.app(scope, receive, send)
            return
        if not chunked:
            await self.app(scope, receive, send)
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await self._refuse(scope, receive, send, limit)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = scope_problem_response(
            scope,
            BodyTooLarge.status,
            BodyTooLarge.code,
            BodyTooLarge.title,
            f"The request body is larger than this route accepts ({limit} bytes)",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that returns `messages` first, then whatever the server sends (the disconnect)."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
