"""Order service routes: parse, call one use case, shape the response."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query
from starlette.requests import Request
from starlette.responses import Response

from cnop.common.dao.order_dao import OrderFilter
from cnop.common.entities.order import (
    ASSET_ID_PATTERN,
    ORDER_ID_PATTERN,
    OrderCreate,
    OrderResponse,
    OrderStatus,
    OrderType,
    order_wire,
)
from cnop.common.jsonio import ExactJSONResponse, Rendered, dumps_native
from cnop.common.web.routing import ExactJSONRoute
from cnop.services.dependencies import (
    Assets,
    CurrentUser,
    Holdings,
    Idempotency,
    Orders,
    PagingDep,
    Trading,
    fetch_page,
)
from cnop.services.idempotent import run_idempotent
from cnop.services.order.schemas import AssetTransaction, AssetTransactionList, OrderEnvelope, OrderList

router = APIRouter(prefix="/api/v1", route_class=ExactJSONRoute, tags=["orders"])
OrderId = Annotated[str, Path(pattern=ORDER_ID_PATTERN)]
AssetId = Annotated[str, Path(pattern=ASSET_ID_PATTERN)]
StatusFilter = OrderStatus | Literal["open", "closed", "all"]


@router.post("/orders", status_code=201, response_model=OrderEnvelope)
async def create_order(
    body: OrderCreate,
    request: Request,
    principal: CurrentUser,
    trading: Trading,
    orders: Orders,
    idempotency: Idempotency,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    async def place() -> Rendered:
        # `OrderEnvelope` written directly (decision 0029): the same bytes as the model's.
        order = await trading.place_order(principal.username, body)
        return Rendered(dumps_native({"data": order_wire(order)}))

    async def rebuild(order_id: str) -> OrderEnvelope:
        return OrderEnvelope(data=OrderResponse.of(await orders.get_order(principal.username, order_id)))

    client_key = idempotency_key or body.client_order_id
    return await run_idempotent(
        request,
        idempotency,
        username=principal.username,
        scope="order",
        client_key=client_key,
        # The fingerprint of a keyed request; without a key nothing reads it, so it is not built.
        payload=body.model_dump(mode="python") if client_key is not None else None,
        work=place,
        rebuild=rebuild,
    )


def order_filter(asset_id: str | None, order_type: OrderType | None, status: StatusFilter | None) -> OrderFilter:
    """The list filters of the query string (`status`: one status, `open`, `closed` or `all`)."""
    return OrderFilter(
        asset_ids=frozenset({asset_id.upper()}) if asset_id is not None else None,
        order_type=order_type,
        status=status if isinstance(status, OrderStatus) else None,
        open={"open": True, "closed": False}.get(status) if isinstance(status, str) else None,
    )


@router.get("/orders", response_model=OrderList)
async def list_orders(
    principal: CurrentUser,
    orders: Orders,
    paging: PagingDep,
    asset_id: Annotated[str | None, Query(pattern=ASSET_ID_PATTERN)] = None,
    order_type: OrderType | None = None,
    status: StatusFilter | None = None,
) -> Response:
    where = order_filter(asset_id, order_type, status)
    page = await fetch_page(
        lambda limit, cursor: orders.get_orders_by_user(principal.username, limit=limit, cursor=cursor, where=where),
        paging,
    )
    shown = [OrderResponse.of(order) for order in page.items]
    return ExactJSONResponse(OrderList(data=shown, has_more=page.has_more, next_cursor=page.next_cursor))


@router.get("/orders/{order_id}", response_model=OrderEnvelope)
async def get_order(order_id: OrderId, principal: CurrentUser, orders: Orders) -> Response:
    order = await orders.get_order(principal.username, order_id)
    return ExactJSONResponse(OrderEnvelope(data=OrderResponse.of(order)))


@router.delete("/orders/{order_id}", response_model=OrderEnvelope)
async def cancel_order(order_id: OrderId, principal: CurrentUser, trading: Trading) -> Response:
    order = await trading.cancel_order(principal.username, order_id)
    return ExactJSONResponse(OrderEnvelope(data=OrderResponse.of(order)))


@router.get("/assets/{asset_id}/transactions", response_model=AssetTransactionList)
async def list_asset_transactions(
    asset_id: AssetId, principal: CurrentUser, assets: Assets, holdings: Holdings, paging: PagingDep
) -> Response:
    asset_id = asset_id.upper()
    await assets.get_asset(asset_id)  # 404 for an asset that does not exist
    page = await fetch_page(
        lambda limit, cursor: holdings.get_asset_transactions(principal.username, asset_id, limit=limit, cursor=cursor),
        paging,
    )
    rows = [
        AssetTransaction(
            transaction_id=txn.transaction_id,
            asset_id=txn.asset_id,
            transaction_type=txn.transaction_type,
            quantity=txn.quantity,
            price=txn.price,
            total=txn.total,
            order_id=txn.order_id,
            status=txn.status,
            created_at=txn.created_at,
            timestamp=txn.created_at,
        )
        for txn in page.items
    ]
    return ExactJSONResponse(AssetTransactionList(data=rows, has_more=page.has_more, next_cursor=page.next_cursor))
