"""`GET /api/v1/events`: the user's order updates and the prices of assets they hold or trade (SSE).

Order events carry an `id`; a client that reconnects with `Last-Event-ID` first receives every
retained event after it (see `cnop.common.events` for the retention window). Price ticks are not
retained: they are current state, and the next tick supersedes them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header
from starlette.requests import Request
from starlette.responses import StreamingResponse

from cnop.common.clock import isoformat
from cnop.common.events import Event
from cnop.common.jsonio import dumps
from cnop.common.money import plain_text
from cnop.container import Container
from cnop.market.prices import Tick
from cnop.services.dependencies import ContainerDep, CurrentUser, client_ip

router = APIRouter(prefix="/api/v1", tags=["events"])
HEARTBEAT_SECONDS = 15.0
DISCONNECT_CHECK_SECONDS = 0.5


def sse(data: Any, event: str, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: ".encode() + dumps(data) + b"\n\n"


def price_tick(tick: Tick) -> dict[str, str]:
    """A `price.tick` event's data: the price as an exact plain string (decision 0008)."""
    return {"asset_id": tick.asset_id, "price": plain_text(tick.price), "time": isoformat(tick.at)}


async def _assets_of_interest(container: Container, username: str) -> set[str]:
    held = {h.asset_id for h in await container.holding_dao.get_holdings(username) if h.quantity > 0}
    queued = {o.asset_id for o in await container.resting.queued_orders_of(username)}
    return held | queued


async def event_stream(
    container: Container, request: Request, username: str, last_event_id: int | None
) -> AsyncIterator[bytes]:
    orders = container.events.listen(username)
    prices = container.price_book.subscribe()
    try:
        yield b"retry: 2000\n\n"
        if last_event_id is not None:
            for missed in container.events.since(username, last_event_id):
                yield sse(missed.data, missed.type, missed.id)
        watched = await _assets_of_interest(container, username)
        order_wait: asyncio.Task[Event] = asyncio.create_task(orders.get())
        price_wait: asyncio.Task[list[Any]] = asyncio.create_task(prices.get())
        idle = 0.0
        try:
            while not await request.is_disconnected():
                done, _ = await asyncio.wait(
                    {order_wait, price_wait}, timeout=DISCONNECT_CHECK_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    idle += DISCONNECT_CHECK_SECONDS
                    if idle >= HEARTBEAT_SECONDS:
                        idle = 0.0
                        yield b": keep-alive\n\n"
                    continue
                idle = 0.0
                if order_wait in done:
                    event = order_wait.result()
                    yield sse(event.data, event.type, event.id)
                    watched = await _assets_of_interest(container, username)
                    order_wait = asyncio.create_task(orders.get())
                if price_wait in done:
                    for tick in price_wait.result():
                        if tick.asset_id in watched:
                            yield sse(price_tick(tick), "price.tick")
                    price_wait = asyncio.create_task(prices.get())
        finally:
            for task in (order_wait, price_wait):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        container.events.unlisten(username, orders)
        container.price_book.unsubscribe(prices)


@router.get("/events", response_class=StreamingResponse)
async def events(
    request: Request,
    principal: CurrentUser,
    container: ContainerDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
) -> StreamingResponse:
    resume = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
    return container.streams.response(
        event_stream(container, request, principal.username, resume),
        user=principal.username,
        ip=client_ip(request) or "unknown",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
