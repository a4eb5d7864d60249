"""Admin routes (role `admin`): asset activation, manual prices, support reads of any ledger."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field
from starlette.responses import Response

from cnop.common.clock import Clock
from cnop.common.config import Settings
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import entry_from_item
from cnop.common.entities.order import ASSET_ID_PATTERN
from cnop.common.exceptions import AssetNotFound, Conflict
from cnop.common.jsonio import ExactJSONResponse
from cnop.common.money import Price, PriceInput
from cnop.common.web.routing import ExactJSONRoute
from cnop.market.bus import PriceBus
from cnop.market.prices import Tick
from cnop.services.dependencies import (
    AdminUser,
    AppClock,
    AppSettings,
    Assets,
    Balances,
    Inventory,
    PagingDep,
    PriceBusDep,
    Users,
    fetch_page,
)
from cnop.services.inventory.schemas import AssetDetailResponse
from cnop.services.user.schemas import USERNAME_PATTERN, LedgerEntry, LedgerPage

router = APIRouter(prefix="/api/v1/admin", route_class=ExactJSONRoute, tags=["admin"])
AssetId = Annotated[str, Path(pattern=ASSET_ID_PATTERN)]


class PriceSet(BaseModel):
    asset_id: Annotated[str, Field(pattern=ASSET_ID_PATTERN)]
    price: PriceInput


class PriceSetResponse(BaseModel):
    asset_id: str
    price: Price
    source: str


@router.post("/prices", response_model=PriceSetResponse)
async def set_price(
    body: PriceSet, admin: AdminUser, settings: AppSettings, assets: Assets, prices: PriceBusDep, clock: AppClock
) -> Response:
    """Set a price by hand; only when the price source is `manual`."""
    asset_id = await set_manual_price(settings, assets, prices, clock, body)
    return ExactJSONResponse(PriceSetResponse(asset_id=asset_id, price=body.price, source="manual"))


async def set_manual_price(settings: Settings, assets: AssetDAO, prices: PriceBus, clock: Clock, body: PriceSet) -> str:
    """Publish an admin's price on the price bus (manual source only); returns the asset id."""
    if settings.price_source != "manual":
        raise Conflict("Prices can be set by hand only when CNOP_PRICE_SOURCE is manual")
    asset_id = body.asset_id.upper()
    if await assets.find_asset(asset_id) is None:
        raise AssetNotFound(f"Asset {asset_id} not found")
    # Published on the price bus: with Redis every process's book applies it, in stream order.
    await prices.publish([Tick(asset_id, body.price, clock.now())])
    return asset_id


@router.post("/assets/{asset_id}/activate", response_model=AssetDetailResponse)
async def activate_asset(asset_id: AssetId, admin: AdminUser, assets: Assets, inventory: Inventory) -> Response:
    asset = await assets.activate_asset(asset_id.upper())
    return ExactJSONResponse(AssetDetailResponse(data=inventory.asset_detail(asset)))


@router.post("/assets/{asset_id}/deactivate", response_model=AssetDetailResponse)
async def deactivate_asset(asset_id: AssetId, admin: AdminUser, assets: Assets, inventory: Inventory) -> Response:
    asset = await assets.deactivate_asset(asset_id.upper())
    return ExactJSONResponse(AssetDetailResponse(data=inventory.asset_detail(asset)))


@router.get("/users/{username}/transactions", response_model=LedgerPage)
async def user_ledger(
    username: Annotated[str, Path(pattern=USERNAME_PATTERN.pattern)],
    admin: AdminUser,
    users: Users,
    balances: Balances,
    paging: PagingDep,
) -> Response:
    username = username.lower()
    await users.get_user_by_username(username)
    page = await fetch_page(
        lambda limit, cursor: balances.get_user_transactions(username, limit=limit, cursor=cursor),
        paging,
    )
    entries = [LedgerEntry.of(entry_from_item(item)) for item in page.items]
    return ExactJSONResponse(LedgerPage(transactions=entries, has_more=page.has_more, next_cursor=page.next_cursor))
