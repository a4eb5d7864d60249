"""Serve an ASGI app with uvicorn inside the test's event loop, on 127.0.0.1 and a free port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn
from starlette.types import ASGIApp


class RunningServer:
    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None]) -> None:
        self.server = server
        self.task = task
        sockets = server.servers[0].sockets
        self.port: int = sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Stop accepting and close every connection (open streams included) within about a second."""
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, timeout=10)


@contextlib.asynccontextmanager
async def serve_asgi(app: ASGIApp, *, port: int = 0, lifespan: str = "off") -> AsyncIterator[RunningServer]:
    """`port` 0 picks a free one; a given port lets a test bring a stopped service back on its address."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan=lifespan,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(1000):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        task.cancel()
        raise RuntimeError("the test server did not start")
    running = RunningServer(server, task)
    try:
        yield running
    finally:
        if not task.done():
            await running.stop()
