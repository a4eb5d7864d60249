"""Inventory routes (public): the asset catalogue with live prices."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from cnop.common.database.store import InvalidCursor
from cnop.common.entities.order import ASSET_ID_PATTERN
from cnop.common.exceptions import ValidationFailed
from cnop.common.jsonio import ExactJSONResponse, RenderedJSONResponse
from cnop.common.web.routing import ExactJSONRoute
from cnop.services.dependencies import Assets, Inventory, Prices
from cnop.services.inventory.schemas import (
    AssetDetailResponse,
    AssetListResponse,
    PriceHistory,
    PriceHistoryResponse,
    PricePoint,
)

router = APIRouter(prefix="/api/v1/inventory", route_class=ExactJSONRoute, tags=["inventory"])
AssetId = Annotated[str, Path(pattern=ASSET_ID_PATTERN, description="1-10 letters or digits")]
INTERVALS = {"raw": None, "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400}


@router.get("/assets", response_model=AssetListResponse)
async def list_assets(
    inventory: Inventory,
    active_only: bool = True,
    limit: Annotated[int, Query(ge=1, le=250)] = 50,
    category: Annotated[str | None, Query(max_length=50)] = None,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> Response:
    try:
        body = await inventory.list_assets_body(active_only=active_only, category=category, limit=limit, cursor=cursor)
    except InvalidCursor as exc:
        raise ValidationFailed.field("cursor", "is not a cursor this service made") from exc
    return RenderedJSONResponse(body)


@router.get("/assets/{asset_id}", response_model=AssetDetailResponse)
async def get_asset(asset_id: AssetId, assets: Assets, inventory: Inventory) -> Response:
    asset = await assets.get_asset(asset_id.upper())
    return RenderedJSONResponse(inventory.asset_detail_body(asset))


@router.get("/assets/{asset_id}/prices", response_model=PriceHistoryResponse)
async def get_price_history(
    asset_id: AssetId,
    assets: Assets,
    prices: Prices,
    interval: Literal["raw", "1m", "5m", "15m", "1h", "1d"] = "1m",
    since: datetime | None = None,
) -> Response:
    asset_id = asset_id.upper()
    await assets.get_asset(asset_id)  # 404 for an unknown asset
    if since is not None and since.tzinfo is None:
        raise ValidationFailed.field("since", "must carry a time zone (e.g. 2026-11-24T10:00:00Z)")
    seconds = INTERVALS[interval]
    ticks = prices.history(asset_id, since=since, interval_seconds=seconds)
    history = PriceHistory(
        asset_id=asset_id,
        interval_seconds=seconds,
        prices=[PricePoint(time=t.at, price=t.price) for t in ticks],
    )
    return ExactJSONResponse(PriceHistoryResponse(data=history))
