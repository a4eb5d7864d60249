"""FastAPI dependencies for the DAOs (the seed's DI names), read from the app's container."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from starlette.requests import Request

from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.dao.user_dao import UserDAO
from cnop.common.database.store import ItemStore

if TYPE_CHECKING:
    from cnop.container import Container


async def get_container(request: Request) -> Container:
    # async: FastAPI would run a plain function in a thread pool on every request
    return container_of(request)


def container_of(request: Request) -> Container:
    return cast("Container", request.app.state.container)


def get_store(request: Request) -> ItemStore:
    return container_of(request).store


def get_user_dao(request: Request) -> UserDAO:
    return container_of(request).user_dao


def get_balance_dao(request: Request) -> BalanceDAO:
    return container_of(request).balance_dao


def get_order_dao(request: Request) -> OrderDAO:
    return container_of(request).order_dao


def get_asset_dao(request: Request) -> AssetDAO:
    return container_of(request).asset_dao
