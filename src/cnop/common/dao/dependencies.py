"""FastAPI dependencies for the DAOs (the seed's DI names), read by name from the app's components.

The names are listed in docs/architecture.md ("Names kept from the seed").

They live beside the DAOs they return, above the storage layer; the app's composition root
(`cnop.container`) puts its components on `app.state.container`, and nothing here imports it.
"""

from __future__ import annotations

from typing import cast

from starlette.requests import Request

from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.dao.user_dao import UserDAO


def component(request: Request, name: str) -> object:
    """The app's component called `name` (an attribute of `app.state.container`)."""
    return getattr(request.app.state.container, name)


def get_user_dao(request: Request) -> UserDAO:
    return cast("UserDAO", component(request, "user_dao"))


def get_balance_dao(request: Request) -> BalanceDAO:
    return cast("BalanceDAO", component(request, "balance_dao"))


def get_order_dao(request: Request) -> OrderDAO:
    return cast("OrderDAO", component(request, "order_dao"))


def get_asset_dao(request: Request) -> AssetDAO:
    return cast("AssetDAO", component(request, "asset_dao"))
