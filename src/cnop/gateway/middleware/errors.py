"""The innermost guard: an exception no handler took becomes the generic 500 problem."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cnop.common.web.problems import internal_error_response, log_unhandled


async def answer_unhandled(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    log_unhandled(scope, exc)
    await internal_error_response(scope)(scope, receive, send)


class UnhandledErrorMiddleware:
    """Answers an exception no handler took with the generic 500 problem, logged with its traceback.

    Starlette would do the same from its outermost middleware, but then the 500 would miss every
    header the gateway adds; here, innermost, it passes back out through all of them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def watch(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if response_started:
                raise  # too late for a clean answer; the server closes the connection
            await answer_unhandled(scope, receive, send, exc)
