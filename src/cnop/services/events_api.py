"""`GET /api/v1/events`: the user's order updates and the prices of assets they hold or trade (SSE).

Order events carry an `id`; a client that reconnects with `Last-Event-ID` first receives every
retained event after it (see `cnop.common.events` for the retention window). Price ticks are not
retained: they are current state, and the next tick supersedes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from starlette.requests import Request
from starlette.responses import StreamingResponse

from cnop.common.clock import Clock, isoformat
from cnop.common.config import Settings
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.entities.order import ASSET_ID_PATTERN
from cnop.common.events import Event, EventBus, EventsUnavailable, Listener, StreamConnections
from cnop.common.exceptions import RateLimited, ValidationFailed
from cnop.common.jsonio import dumps
from cnop.common.money import plain_text
from cnop.common.web.request_user import bind_request_user
from cnop.market.prices import PriceBook, Tick
from cnop.services.dependencies import (
    Accounts,
    AppClock,
    AppSettings,
    Assets,
    Holdings,
    OrderEvents,
    Orders,
    Prices,
    PriceStreamConnections,
    Streams,
    Tokens,
    client_ip,
    current_principal,
)
from cnop.services.user.service import Principal
from cnop.services.web.session import session_principal

router = APIRouter(prefix="/api/v1", tags=["events"])
HEARTBEAT_SECONDS = 15.0
DISCONNECT_CHECK_SECONDS = 0.5
DRAINING_HINT = b"retry: 1000\n\n"
# The events cannot be read now (Redis down): the stream ends, the client retries a bit later.
UNAVAILABLE_HINT = b"retry: 5000\n\n"


def sse(data: Any, event: str, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: ".encode() + dumps(data) + b"\n\n"


def price_tick(tick: Tick) -> dict[str, str]:
    """A `price.tick` event's data: the price as an exact plain string (decision 0008)."""
    return {"asset_id": tick.asset_id, "price": plain_text(tick.price), "time": isoformat(tick.at)}


@dataclass(frozen=True, slots=True)
class UserStreamSources:
    """What a user's event stream reads: order events, price ticks, and what the user holds or has queued."""

    events: EventBus
    prices: PriceBook
    holdings: HoldingDAO
    orders: OrderDAO

    async def assets_of_interest(self, username: str) -> set[str]:
        held = {h.asset_id for h in await self.holdings.get_holdings(username) if h.quantity > 0}
        queued = {o.asset_id for o in await self.orders.get_queued_orders(username)}
        return held | queued


async def event_stream(
    sources: UserStreamSources, request: Request, orders: Listener | None, last_event_id: str | None
) -> AsyncIterator[bytes]:
    """The stream of `orders` (listening since before the response began: nothing is missed).

    `None` for `orders`: the bus cannot be read now; the stream is only a retry hint.
    """
    yield b"retry: 2000\n\n"
    if orders is None:
        yield UNAVAILABLE_HINT
        return
    username = orders.username
    prices = sources.prices.subscribe()
    try:
        # What the replay sent bounds what the live queue may still send: each event goes once.
        sent: tuple[int, int] | None = None
        if last_event_id:
            try:
                missed = await sources.events.since(username, last_event_id)
            except EventsUnavailable:
                yield UNAVAILABLE_HINT
                return
            for event in missed:
                yield sse(event.data, event.type, event.id)
                sent = event.position
        watched = await sources.assets_of_interest(username)
        order_wait: asyncio.Task[Event | None] = asyncio.create_task(orders.queue.get())
        price_wait: asyncio.Task[list[Any]] = asyncio.create_task(prices.get())
        idle = 0.0
        draining = getattr(request.app.state, "draining", None)
        try:
            while not await request.is_disconnected():
                if isinstance(draining, asyncio.Event) and draining.is_set():
                    yield DRAINING_HINT  # the server is stopping: reconnect (to another replica) soon
                    return
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
                    update = order_wait.result()
                    if update is None:
                        yield UNAVAILABLE_HINT  # the bus lost its feed: come back with Last-Event-ID
                        return
                    if sent is None or update.position > sent:
                        yield sse(update.data, update.type, update.id)
                        sent = update.position
                        watched = await sources.assets_of_interest(username)
                    order_wait = asyncio.create_task(orders.queue.get())
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
        sources.prices.unsubscribe(prices)


async def stream_principal(request: Request, accounts: Accounts, tokens: Tokens) -> Principal:
    """The bearer token's user; without an Authorization header, the web session cookie's.

    A browser's EventSource cannot send headers, so the web app's pages reach this stream with
    their session cookie (HttpOnly, SameSite=Strict: a cross-site page cannot use it).
    """
    if request.headers.get("authorization") is None:
        principal = await session_principal(request, accounts)
        if principal is not None:
            bind_request_user(request, principal.username)
            return principal
    return await current_principal(request, accounts, tokens)


@router.get("/events", response_class=StreamingResponse)
async def events(
    request: Request,
    principal: Annotated[Principal, Depends(stream_principal)],
    streams: Streams,
    order_events: OrderEvents,
    prices: Prices,
    holdings: Holdings,
    order_dao: Orders,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
) -> StreamingResponse:
    """The user's events; `Last-Event-ID` (an id this bus issued) first replays the retained ones after it.

    An id in another format, or one the bus never issued, replays nothing: the stream starts from now.
    """
    sources = UserStreamSources(order_events, prices, holdings, order_dao)
    # Listen before answering: once the client has the 200, every later event reaches it.
    try:
        orders: Listener | None = await order_events.listen(principal.username)
    except EventsUnavailable:
        orders = None
    return streams.response(
        event_stream(sources, request, orders, last_event_id),
        user=principal.username,
        ip=client_ip(request) or "unknown",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        on_close=None if orders is None else functools.partial(order_events.unlisten, orders),
    )


# --- the public price stream ------------------------------------------------------------------


def _tick_event(tick: Tick) -> bytes:
    return sse(price_tick(tick), "price.tick")


async def price_stream(
    prices: PriceBook,
    clock: Clock,
    settings: Settings,
    request: Request,
    assets: set[str],
    connections: StreamConnections,
    ip: str,
) -> AsyncIterator[bytes]:
    queue = prices.subscribe()
    deadline = clock.timestamp() + settings.price_stream_max_seconds
    try:
        yield b"retry: 2000\n\n"
        for asset_id in sorted(assets):
            current = prices.current(asset_id)
            if current is not None:
                yield _tick_event(current)
        idle = 0.0
        while not await request.is_disconnected() and clock.timestamp() < deadline:
            try:
                # asyncio.timeout, not wait_for, which on Python 3.11 can swallow a cancellation.
                async with asyncio.timeout(DISCONNECT_CHECK_SECONDS):
                    batch = await queue.get()
            except TimeoutError:
                idle += DISCONNECT_CHECK_SECONDS
                if idle >= HEARTBEAT_SECONDS:
                    idle = 0.0
                    yield b": keep-alive\n\n"
                continue
            idle = 0.0
            for tick in batch:
                if tick.asset_id in assets:
                    yield _tick_event(tick)
    finally:
        prices.unsubscribe(queue)
        connections.release(ip)


@router.get("/prices/stream", response_class=StreamingResponse)
async def prices_stream(
    request: Request,
    settings: AppSettings,
    clock: AppClock,
    prices: Prices,
    asset_records: Assets,
    connections: PriceStreamConnections,
    assets: Annotated[str, Query(min_length=1, max_length=2000, description="comma-separated asset ids")],
) -> StreamingResponse:
    """Public price ticks of the named assets (SSE): the current price of each at once, then every tick.

    Bounded per connection: at most `price_stream_max_assets` assets, and the server ends the
    stream after `price_stream_max_seconds` (EventSource reconnects by itself); at most
    `price_stream_connections_per_ip` open streams per client IP (429 beyond).
    """
    wanted = {part.strip().upper() for part in assets.split(",") if part.strip()}
    limit = settings.price_stream_max_assets
    if not wanted:
        raise ValidationFailed.field("assets", "must name at least one asset")
    if len(wanted) > limit:
        raise ValidationFailed.field("assets", f"may name at most {limit} assets")
    bad = sorted(a for a in wanted if not re.fullmatch(ASSET_ID_PATTERN, a))
    if bad:
        raise ValidationFailed.field("assets", f"{bad[0][:20]} is not an asset id")
    known = {a.asset_id for a in await asset_records.all_assets()}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValidationFailed.field("assets", f"unknown asset {unknown[0]}")
    ip = client_ip(request) or "unknown"
    if not connections.acquire(ip):
        raise RateLimited(f"At most {connections.per_ip} open price streams per client", retry_after=5)
    return StreamingResponse(
        price_stream(prices, clock, settings, request, wanted, connections, ip),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
