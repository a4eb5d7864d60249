"""The Alpaca-compatible API, mounted at `/alpaca`, and its error shape at the edge.

A sub-application of its own: its routes never appear in the native OpenAPI document (so the
native API's contract, fuzzing and docs stay about `/api/v1`), it never redirects (alpaca-py
refuses redirects, and so does this API: a path with a trailing slash is simply not found),
and its errors are Alpaca's `{"code", "message"}`. The sub-application raises the same errors
as every native route and renders them as problem documents; `AlpacaErrorShape`, outermost in
the gateway, rewrites every problem document answered under the prefix, whoever wrote it (a
route, validation, the router, or the gateway's own middleware: 413, 429, 503, 500).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cnop.common.web.problems import install_exception_handlers, problem_response
from cnop.common.web.routing import NATIVE_TELEMETRY_OFF
from cnop.container import Container
from cnop.services.alpaca.errors import alpaca_body
from cnop.services.alpaca.market_data import router as market_data_router
from cnop.services.alpaca.trading import router as trading_router

PREFIX = "/alpaca"
_PROBLEM = b"application/problem+json"
_NO_STORE = (b"cache-control", b"no-store")


def create_alpaca_app(container: Container) -> FastAPI:
    app = FastAPI(
        openapi_url=None, docs_url=None, redoc_url=None, redirect_slashes=False, telemetry=NATIVE_TELEMETRY_OFF
    )
    app.state.container = container
    app.router.redirect_slashes = False
    install_exception_handlers(app)
    for router in (trading_router, market_data_router):
        app.router.routes.extend(router.routes)
    return app


def mount_alpaca(app: FastAPI, container: Container) -> None:
    """Mount the compat API; `/alpaca` itself (no path) is not found rather than redirected."""

    async def prefix_alone(request: Request) -> Response:
        return problem_response(request, 404, "not_found", "Not found", "The requested resource does not exist.")

    app.add_route(PREFIX, prefix_alone, methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    app.mount(PREFIX, create_alpaca_app(container))


def is_compat_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class AlpacaErrorShape:
    """Rewrites problem documents answered under `/alpaca` into Alpaca's error shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_compat_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def reshape(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", ()))
                if headers.get(b"content-type", b"").startswith(_PROBLEM):
                    start = message
                    return
                if b"cache-control" not in headers:  # account data, as under /api/
                    message = {**message, "headers": [*message.get("headers", ()), _NO_STORE]}
                await send(message)
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await self._send_reshaped(start, b"".join(chunks), send)

        await self.app(scope, receive, reshape)

    @staticmethod
    async def _send_reshaped(start: Message, body: bytes, send: Send) -> None:
        try:
            problem: Any = json.loads(body)
        except ValueError:
            problem = {}
        status, payload = alpaca_body(problem if isinstance(problem, dict) else {}, start["status"])
        encoded = json.dumps(payload, separators=(",", ":")).encode()
        headers = [
            (name, value)
            for name, value in start.get("headers", ())
            if name.lower() not in (b"content-type", b"content-length")
        ]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(encoded)).encode())]
        if not any(name.lower() == b"cache-control" for name, _ in headers):
            headers.append(_NO_STORE)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": encoded})
