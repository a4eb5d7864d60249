"""Running an app under uvicorn with a graceful drain on SIGTERM (what Kubernetes sends first).

On the first SIGTERM or SIGINT the app's `state.draining` event is set, so `/health/ready` turns
503 and event streams close with a retry hint, while the server keeps answering for
`drain_seconds` (time for the load balancer to stop sending new requests). Then uvicorn shuts
down as usual: it stops accepting, lets in-flight requests finish (up to
`graceful_timeout_seconds`), and runs the app's shutdown. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import socket
from types import FrameType
from typing import Any

import uvicorn

from cnop.common.config import Settings
from cnop.common.logging import get_logger

_log = get_logger("cnop.serving")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, draining: asyncio.Event | None, drain_seconds: float) -> None:
        super().__init__(config)
        self._draining = draining
        self._drain_seconds = drain_seconds
        self._drain_started = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_started or self._draining is None or self._loop is None or self._drain_seconds <= 0:
            if self._draining is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self._draining.set)
            super().handle_exit(sig, frame)
            return
        self._drain_started = True
        self._loop.call_soon_threadsafe(self._begin_drain, sig, frame)

    def _begin_drain(self, sig: int, frame: FrameType | None) -> None:
        assert self._draining is not None
        assert self._loop is not None
        self._draining.set()
        _log.info("draining", seconds=self._drain_seconds)
        self._loop.call_later(self._drain_seconds, super().handle_exit, sig, frame)


def run_app(
    app: Any,
    *,
    host: str,
    port: int,
    drain_seconds: float = 0.0,
    graceful_timeout_seconds: float = 30.0,
    settings: Settings | None = None,
) -> None:
    """Serve `app` until a signal; drain first when `drain_seconds` > 0 and the app has `state.draining`.

    With `settings`, the server runs behind the edge limits of `gateway/server.py` (bounded request
    heads, head timeout, connection caps, no proxy headers from uvicorn).
    """
    options: dict[str, Any] = {
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": int(graceful_timeout_seconds),
    }
    if settings is not None:
        from cnop.gateway.server import server_config

        config: uvicorn.Config = server_config(app, settings, host=host, port=port, **options)
    else:
        config = uvicorn.Config(app, host=host, port=port, **options)
    draining = getattr(getattr(app, "state", None), "draining", None)
    DrainingServer(config, draining if isinstance(draining, asyncio.Event) else None, drain_seconds).run()
