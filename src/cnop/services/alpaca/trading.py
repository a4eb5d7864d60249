"""Alpaca's trading API (`/v2/...`) over the native use cases: account, assets, orders, positions."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from cnop.common.dao.order_dao import OrderDAO, OrderFilter
from cnop.common.entities.order import Order, OrderCreate, OrderResponse, OrderSide, OrderType, TimeInForce
from cnop.common.exceptions import (
    CnopError,
    InsufficientHoldings,
    OrderNotFound,
    ValidationFailed,
)
from cnop.common.idempotency import IdempotencyRecords
from cnop.common.jsonio import dumps, loads
from cnop.common.money import QuantityInput, round_down
from cnop.common.web.routing import ExactJSONRoute
from cnop.services.alpaca import render
from cnop.services.alpaca.auth import Reader, Trader
from cnop.services.alpaca.errors import alpaca_error
from cnop.services.alpaca.ids import order_id_from, order_uuid
from cnop.services.alpaca.schemas import (
    Account,
    AlpacaAsset,
    AlpacaOrder,
    CancelResult,
    CloseResult,
    MarketClock,
    OrderRequest,
    PercentageInput,
    Position,
)
from cnop.services.alpaca.symbols import compact, pair
from cnop.services.alpaca.views import AlpacaReads, Reads
from cnop.services.dependencies import AppClock, Assets, Idempotency, Orders, Trading
from cnop.services.idempotent import idempotent_outcome
from cnop.services.order.schemas import OrderEnvelope
from cnop.services.order.service import OrderService

router = APIRouter(prefix="/v2", route_class=ExactJSONRoute)

# Native field names as Alpaca's clients know them, for validation messages.
ALPACA_FIELDS = {
    "quantity": "qty",
    "price": "limit_price",
    "trail_amount": "trail_price",
    "asset_id": "symbol",
    "order_type": "type",
}
MAX_LIST = 500


def json_response(value: Any, status_code: int = 200) -> Response:
    """Alpaca's JSON: models written by alias (the asset's `class`), decimals already strings."""
    if isinstance(value, list):
        value = [item.model_dump(mode="python", by_alias=True) for item in value]
    else:
        value = value.model_dump(mode="python", by_alias=True)
    return Response(dumps(value), status_code=status_code, media_type="application/json")


def _renamed(errors: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{**e, "field": ALPACA_FIELDS.get(e["field"], e["field"])} for e in errors]


_NATIVE_WORDS = re.compile(r"\b(" + "|".join(ALPACA_FIELDS) + r")\b")


def _alpaca_words(message: str) -> str:
    """A native rule's message in Alpaca's field names (`price is required` -> `limit_price is required`)."""
    return _NATIVE_WORDS.sub(lambda match: ALPACA_FIELDS[match.group(1)], message)


def _validation(exc: ValidationError) -> ValidationFailed:
    errors = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error.get("loc", ())) or "body"
        message = _alpaca_words(str(error.get("msg", "invalid")).removeprefix("Value error, "))
        errors.append({"field": ALPACA_FIELDS.get(field, field), "message": message})
    return ValidationFailed(f"{errors[0]['field']}: {errors[0]['message']}", errors=errors)


def _with_alpaca_names(
    work: Callable[[], Awaitable[Any]],
) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        try:
            return await work()
        except ValidationFailed as exc:
            errors = _renamed(exc.errors)
            detail = f"{errors[0]['field']}: {errors[0]['message']}" if errors else exc.detail
            raise ValidationFailed(detail, errors=errors) from exc

    return run


async def _order_response(orders: OrderDAO, username: str, status_code: int, body: bytes) -> Response:
    """An order placement's outcome (first or replayed) in Alpaca's shape."""
    if status_code >= 400:
        return Response(body, status_code=status_code, media_type="application/problem+json")
    order_id = loads(body)["data"]["order_id"]
    order = await orders.get_order(username, order_id)
    return json_response(render.order(order))


# --- account, clock, assets -----------------------------------------------------------------


@router.get("/account", response_model=Account)
async def get_account(principal: Reader, reads: Reads) -> Response:
    return json_response(await reads.account(principal.user))


@router.get("/clock", response_model=MarketClock)
async def get_clock(principal: Reader, clock: AppClock) -> Response:
    now = clock.now()
    # Crypto trades around the clock: always open; the "next" session starts at the next UTC day.
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return json_response(MarketClock(timestamp=now, is_open=True, next_open=midnight, next_close=midnight))


@router.get("/assets", response_model=list[AlpacaAsset])
async def list_assets(
    principal: Reader,
    assets: Assets,
    status: Literal["active", "inactive"] | None = None,
    asset_class: Annotated[str | None, Query(max_length=32)] = None,
    exchange: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    if asset_class not in (None, "crypto") or exchange not in (None, "CRYPTO"):
        return json_response([])
    rendered = [render.asset(a) for a in await assets.all_assets()]
    if status is not None:
        rendered = [a for a in rendered if a.status == status]
    return json_response(sorted(rendered, key=lambda a: a.symbol))


@router.get("/assets/{symbol_or_id:path}", response_model=AlpacaAsset)
async def get_asset(symbol_or_id: str, principal: Reader, reads: Reads) -> Response:
    return json_response(render.asset(await reads.asset_by_symbol_or_id(symbol_or_id)))


# --- orders ---------------------------------------------------------------------------------


def _native_request(body: OrderRequest, asset_id: str, client_order_id: str) -> OrderCreate:
    if body.take_profit is not None or body.stop_loss is not None or body.legs:
        raise ValidationFailed.field("order_class", "only simple orders are offered for crypto")
    if body.type == "market" and body.limit_price is not None:
        raise ValidationFailed.field("limit_price", "is not allowed for market orders")
    assert body.qty is not None
    try:
        return OrderCreate(
            order_type=render.NATIVE_TYPE[(body.type, body.side)],
            asset_id=asset_id,
            quantity=body.qty,
            price=body.limit_price,
            stop_price=body.stop_price,
            trail_amount=body.trail_price,
            trail_percent=body.trail_percent,
            time_in_force=body.time_in_force,
            client_order_id=client_order_id,
        )
    except ValidationError as exc:
        raise _validation(exc) from exc


@router.post("/orders", response_model=AlpacaOrder)
async def submit_order(
    body: OrderRequest,
    request: Request,
    principal: Trader,
    reads: Reads,
    trading: Trading,
    orders: Orders,
    idempotency: Idempotency,
) -> Response:
    if (body.qty is None) == (body.notional is None):
        raise ValidationFailed.field("qty", "give exactly one of qty and notional")
    asset = await reads.find_asset(body.symbol)
    if asset is None:
        raise ValidationFailed.field("symbol", f"no tradeable asset is named {body.symbol}")
    # Alpaca names every order; so do we, so that it can be found by its client id later.
    client_order_id = body.client_order_id or str(uuid.uuid4())
    username = principal.username

    async def place() -> OrderEnvelope:
        if body.notional is not None:
            if body.type != "market":
                raise ValidationFailed.field("notional", "applies to market orders only")
            order = await trading.place_notional_order(
                username,
                render.NATIVE_TYPE[("market", body.side)],
                asset.asset_id,
                body.notional,
                time_in_force=TimeInForce(body.time_in_force),
                client_order_id=client_order_id,
            )
        else:
            native = _native_request(body, asset.asset_id, client_order_id)
            order = await trading.place_order(username, native)
        return OrderEnvelope(data=OrderResponse.of(order))

    async def rebuild(order_id: str) -> OrderEnvelope:
        return OrderEnvelope(data=OrderResponse.of(await orders.get_order(username, order_id)))

    outcome = await idempotent_outcome(
        request,
        idempotency,
        username=username,
        scope="order",
        client_key=client_order_id,
        payload={"alpaca": body.model_dump(mode="python", exclude={"client_order_id"})},
        work=_with_alpaca_names(place),
        rebuild=rebuild,
    )
    return await _order_response(orders, username, outcome.status_code, outcome.body)


def _order_filter(
    status: str, symbols: set[str] | None, side: str | None, after: datetime | None, until: datetime | None
) -> OrderFilter:
    return OrderFilter(
        open={"open": True, "closed": False}.get(status),
        asset_ids=frozenset(symbols) if symbols is not None else None,
        side=OrderSide(side) if side is not None else None,
        created_after=after,
        created_until=until,
    )


@router.get("/orders", response_model=list[AlpacaOrder])
async def list_orders(
    principal: Reader,
    reads: Reads,
    orders: Orders,
    status: Literal["open", "closed", "all"] = "open",
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
    after: datetime | None = None,
    until: datetime | None = None,
    direction: Literal["asc", "desc"] = "desc",
    symbols: Annotated[str | None, Query(max_length=4096)] = None,
    side: Literal["buy", "sell"] | None = None,
    nested: bool | None = None,
) -> Response:
    wanted: set[str] | None = None
    if symbols:
        wanted = set()
        for symbol in symbols.split(","):
            asset = await reads.find_asset(symbol)
            if asset is not None:
                wanted.add(asset.asset_id)
    for name, moment in (("after", after), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise ValidationFailed.field(name, "must carry a time zone (RFC 3339)")
    page = await orders.get_orders_by_user(
        principal.username,
        limit=limit,
        where=_order_filter(status, wanted, side, after, until),
        descending=direction == "desc",
    )
    return json_response([render.order(order) for order in page.items])


async def _by_client_order_id(
    orders: OrderDAO, idempotency: IdempotencyRecords, username: str, client_order_id: str
) -> Order:
    stored = await idempotency.stored_response(username, "order", client_order_id)
    if stored is not None and stored.status_code < 400:
        order = await orders.get_order(username, loads(stored.body)["data"]["order_id"])
        if order.client_order_id == client_order_id:  # (a native Idempotency-Key shares the scope)
            return order
    # Past the idempotency window: the order itself says which client id it carries.
    page = await orders.get_orders_by_user(username, limit=1, where=OrderFilter(client_order_id=client_order_id))
    if page.items:
        return page.items[0]
    # An order placed without a client id is shown with its own id in that place.
    order_id = order_id_from(client_order_id)
    if order_id is not None and order_uuid(order_id) == client_order_id.lower():
        return await orders.get_order(username, order_id)
    raise OrderNotFound(f"order not found for client_order_id {client_order_id}")


@router.get("/orders:by_client_order_id", response_model=AlpacaOrder)
async def get_order_by_client_id(
    principal: Reader,
    orders: Orders,
    idempotency: Idempotency,
    client_order_id: Annotated[str, Query(min_length=1, max_length=128)],
) -> Response:
    order = await _by_client_order_id(orders, idempotency, principal.username, client_order_id)
    return json_response(render.order(order))


def _native_id(order_id: str) -> str:
    native = order_id_from(order_id)
    if native is None:
        raise OrderNotFound(f"order not found: {order_id}")
    return native


@router.get("/orders/{order_id}", response_model=AlpacaOrder)
async def get_order(order_id: str, principal: Reader, orders: Orders) -> Response:
    order = await orders.get_order(principal.username, _native_id(order_id))
    return json_response(render.order(order))


@router.delete("/orders/{order_id}", status_code=204)
async def cancel_order(order_id: str, principal: Trader, trading: Trading) -> Response:
    await trading.cancel_order(principal.username, _native_id(order_id))
    return Response(status_code=204)


def _error_body(exc: CnopError) -> tuple[int, dict[str, Any]]:
    status, code = alpaca_error(exc.status, exc.code)
    return status, {"code": code, "message": exc.detail}


@router.delete("/orders", status_code=207, response_model=list[CancelResult])
async def cancel_all_orders(principal: Trader, trading: Trading, orders: Orders) -> Response:
    results: list[CancelResult] = []
    for order in await orders.get_queued_orders(principal.username):
        try:
            cancelled = await trading.cancel_order(principal.username, order.order_id)
        except CnopError as exc:
            status, body = _error_body(exc)
            results.append(CancelResult(id=order_uuid(order.order_id), status=status, body=body))
            continue
        rendered = render.order(cancelled).model_dump(mode="json")
        results.append(CancelResult(id=order_uuid(order.order_id), status=200, body=rendered))
    return json_response(results, status_code=207)


# --- positions ------------------------------------------------------------------------------


@router.get("/positions", response_model=list[Position])
async def list_positions(principal: Reader, reads: Reads) -> Response:
    held = await reads.holdings(principal.username)
    return json_response([reads.position(holding) for holding in held])


@router.get("/positions/{symbol:path}", response_model=Position)
async def get_position(symbol: str, principal: Reader, reads: Reads) -> Response:
    _, holding = await reads.holding_of(principal.username, symbol)
    return json_response(reads.position(holding))


async def _close(
    reads: AlpacaReads,
    trading: OrderService,
    username: str,
    symbol: str,
    qty: Decimal | None,
    percentage: Decimal | None,
) -> Order:
    """Sell (part of) a position at the market: `qty` units, or `percentage` of what is available."""
    asset, holding = await reads.holding_of(username, symbol)
    if qty is not None and percentage is not None:
        raise ValidationFailed.field("qty", "give qty or percentage, not both")
    if percentage is not None and not 0 < percentage <= 100:
        raise ValidationFailed.field("percentage", "must be above 0 and at most 100")
    if qty is not None and qty <= 0:
        raise ValidationFailed.field("qty", "must be greater than 0")
    if qty is not None:
        quantity = qty
    elif percentage is not None:
        quantity = round_down(holding.available * percentage / 100, asset.scale).normalize()
    else:
        quantity = holding.available
    if quantity <= 0 or quantity > holding.available:
        raise InsufficientHoldings(
            f"insufficient qty available for order (requested: {quantity}, available: {holding.available})"
        )
    try:
        request = OrderCreate(order_type=OrderType.MARKET_SELL, asset_id=asset.asset_id, quantity=quantity)
    except ValidationError as exc:
        raise _validation(exc) from exc
    try:
        return await trading.place_order(username, request)
    except ValidationFailed as exc:
        raise ValidationFailed(exc.detail, errors=_renamed(exc.errors)) from exc


@router.delete("/positions/{symbol:path}", response_model=AlpacaOrder)
async def close_position(
    symbol: str,
    principal: Trader,
    reads: Reads,
    trading: Trading,
    qty: Annotated[QuantityInput | None, Query()] = None,
    percentage: Annotated[PercentageInput | None, Query()] = None,
) -> Response:
    order = await _close(reads, trading, principal.username, symbol, qty, percentage)
    return json_response(render.order(order))


@router.delete("/positions", status_code=207, response_model=list[CloseResult])
async def close_all_positions(
    principal: Trader, reads: Reads, trading: Trading, orders: Orders, cancel_orders: bool = False
) -> Response:
    username = principal.username
    if cancel_orders:
        for order in await orders.get_queued_orders(username):
            try:
                await trading.cancel_order(username, order.order_id)
            except CnopError:
                continue  # filled or cancelled meanwhile
    results: list[CloseResult] = []
    for holding in await reads.holdings(username):
        symbol = compact(holding.asset_id)
        try:
            order = await _close(reads, trading, username, pair(holding.asset_id), None, None)
        except CnopError as exc:
            status, body = _error_body(exc)
            results.append(CloseResult(order_id=None, status=status, symbol=symbol, body={**body, "symbol": symbol}))
            continue
        rendered = render.order(order).model_dump(mode="json")
        results.append(CloseResult(order_id=order_uuid(order.order_id), status=200, symbol=symbol, body=rendered))
    return json_response(results, status_code=207)
