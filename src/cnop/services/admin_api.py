"""Admin routes (role `admin`): asset activation, manual prices, support reads of any ledger."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field
from starlette.responses import Response

from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.entities.order import ASSET_ID_PATTERN
from cnop.common.exceptions import AssetNotFound, Conflict, PriceUnavailable
from cnop.common.jsonio import ExactJSONResponse
from cnop.common.money import Price, PriceInput
from cnop.common.web.routing import ExactJSONRoute
from cnop.market.prices import PriceSource
from cnop.market.sources.manual import ManualPriceSource
from cnop.services.dependencies import (
    AdminUser,
    Assets,
    Balances,
    Inventory,
    PagingDep,
    PriceSourceDep,
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
async def set_price(body: PriceSet, admin: AdminUser, source: PriceSourceDep, assets: Assets) -> Response:
    """Set a price by hand; only when the price source is `manual`."""
    asset_id = await set_manual_price(source, assets, body)
    return ExactJSONResponse(PriceSetResponse(asset_id=asset_id, price=body.price, source="manual"))


async def set_manual_price(source: PriceSource | None, assets: AssetDAO, body: PriceSet) -> str:
    """Hand an admin's price to the manual price source; return once the feed has applied it.

    Returns the asset id. Only when the price source is `manual` (409 otherwise).
    """
    if not isinstance(source, ManualPriceSource):
        raise Conflict("Prices can be set by hand only when CNOP_PRICE_SOURCE is manual")
    asset = await assets.get_asset(body.asset_id.upper())
    try:
        await source.set_prices_applied({asset.asset_id: body.price})
    except ValueError as exc:  # an asset the catalogue does not list
        raise AssetNotFound(f"Asset {asset.asset_id} not found") from exc
    except (TimeoutError, RuntimeError) as exc:
        raise PriceUnavailable("The price feed did not apply the price; try again") from exc
    return asset.asset_id


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
    entries = [LedgerEntry.of(entry) for entry in page.items]
    return ExactJSONResponse(LedgerPage(transactions=entries, has_more=page.has_more, next_cursor=page.next_cursor))
