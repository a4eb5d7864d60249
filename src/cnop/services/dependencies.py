"""What a route may ask for: one `Annotated` dependency per component, the caller, paging.

A route names what it uses (`accounts: Accounts`, `prices: Prices`) and FastAPI hands it that
component of the app; no route sees the whole composition root. Each component is read by
name from the app (`cnop.common.dao.dependencies.component`), so nothing here imports
`cnop.container`. A new service: build it in `container.py`, add its alias here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query
from starlette.requests import Request

from cnop.common.clock import Clock
from cnop.common.config import Settings
from cnop.common.dao.api_key_dao import ApiKeyDAO
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.dependencies import component
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.dao.user_dao import UserDAO
from cnop.common.database.store import InvalidCursor, Page
from cnop.common.events import EventBus, StreamConnections
from cnop.common.exceptions import AuthenticationRequired, Forbidden, InvalidToken, ValidationFailed
from cnop.common.idempotency import IdempotencyRecords
from cnop.common.metrics import Metrics
from cnop.common.security import AuditLogger, TokenClaims, TokenManager
from cnop.common.security.login_guard import AccountThrottle, LoginGuard
from cnop.common.web.request_user import bind_request_user
from cnop.common.web.routing import COMPONENT_ATTRIBUTE
from cnop.market.prices import PriceBook, PriceSource
from cnop.services.insights.service import InsightsService
from cnop.services.inventory.service import InventoryService
from cnop.services.order.service import OrderService
from cnop.services.stream_slots import StreamSlots
from cnop.services.user.api_keys import ApiKeyService
from cnop.services.user.portfolio import PortfolioService
from cnop.services.user.service import AccountService, MoneyService, Principal


def provide(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency returning the app's component `name` (FastAPI resolves it once per request)."""

    # async: FastAPI would run a plain function in a thread pool on every request
    async def dependency(request: Request) -> Any:
        return component(request, name)

    dependency.__name__ = dependency.__qualname__ = f"get_{name}"
    # The lean route path (cnop.common.web.routing) reads the component without the call.
    setattr(dependency, COMPONENT_ATTRIBUTE, name)
    return dependency


# --- the process: settings, clock, security, observability ----------------------------------
AppSettings = Annotated[Settings, Depends(provide("settings"))]
AppClock = Annotated[Clock, Depends(provide("clock"))]
Tokens = Annotated[TokenManager, Depends(provide("tokens"))]
Audit = Annotated[AuditLogger, Depends(provide("audit"))]
AppMetrics = Annotated[Metrics, Depends(provide("metrics"))]
IpLoginGuard = Annotated[LoginGuard, Depends(provide("login_guard"))]
AccountLoginThrottle = Annotated[AccountThrottle, Depends(provide("account_throttle"))]
Idempotency = Annotated[IdempotencyRecords, Depends(provide("idempotency"))]
Streams = Annotated[StreamSlots, Depends(provide("streams"))]
PriceStreamConnections = Annotated[StreamConnections, Depends(provide("price_stream_connections"))]

# --- the DAOs (the seed's DI functions, `get_user_dao` ..., are in cnop.common.dao.dependencies) -
Users = Annotated[UserDAO, Depends(provide("user_dao"))]
Balances = Annotated[BalanceDAO, Depends(provide("balance_dao"))]
Assets = Annotated[AssetDAO, Depends(provide("asset_dao"))]
Holdings = Annotated[HoldingDAO, Depends(provide("holding_dao"))]
Orders = Annotated[OrderDAO, Depends(provide("order_dao"))]
ApiKeyRecords = Annotated[ApiKeyDAO, Depends(provide("api_key_dao"))]

# --- market data --------------------------------------------------------------------------------
Prices = Annotated[PriceBook, Depends(provide("price_book"))]
PriceSourceDep = Annotated[PriceSource | None, Depends(provide("price_source"))]

# --- the services, one per domain ---------------------------------------------------------------
Accounts = Annotated[AccountService, Depends(provide("accounts"))]
Money = Annotated[MoneyService, Depends(provide("money"))]
ApiKeys = Annotated[ApiKeyService, Depends(provide("api_keys"))]
Portfolios = Annotated[PortfolioService, Depends(provide("portfolio"))]
Inventory = Annotated[InventoryService, Depends(provide("inventory"))]
Trading = Annotated[OrderService, Depends(provide("trading"))]
Insights = Annotated[InsightsService, Depends(provide("insights"))]
OrderEvents = Annotated[EventBus, Depends(provide("events"))]


# --- the caller ----------------------------------------------------------------------------------


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; anything else is a 401."""
    if not header:
        raise AuthenticationRequired()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or " " in token.strip() or not token.strip():
        raise InvalidToken("The Authorization header must be 'Bearer <token>'")
    return token.strip()


def verified_claims(request: Request, tokens: TokenManager) -> TokenClaims:
    """Claims verified once per request (the rate limiter may already have done it)."""
    state = request.scope.setdefault("state", {})
    claims = state.get("token_claims")
    if isinstance(claims, TokenClaims):
        return claims
    claims = tokens.verify_access_token(bearer_token(request.headers.get("authorization")))
    state["token_claims"] = claims
    return claims


async def current_principal(request: Request, accounts: Accounts, tokens: Tokens) -> Principal:
    principal = await accounts.principal_for(verified_claims(request, tokens))
    bind_request_user(request, principal.username)
    return principal


async def current_admin(
    request: Request, principal: Annotated[Principal, Depends(current_principal)], audit: Audit
) -> Principal:
    if not principal.is_admin:
        audit.log_access_denied(principal.username, resource=request.url.path, reason="admin_required")
        raise Forbidden("Administrator role required")
    return principal


CurrentUser = Annotated[Principal, Depends(current_principal)]
AdminUser = Annotated[Principal, Depends(current_admin)]


def client_ip(request: Request) -> str | None:
    state = request.scope.get("state") or {}
    ip = state.get("client_ip")
    if isinstance(ip, str):
        return ip
    return request.client.host if request.client else None


# --- paging --------------------------------------------------------------------------------------


class Paging:
    """`limit` (1-100), an opaque `cursor`, and `offset` for old clients."""

    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
        cursor: Annotated[str | None, Query(max_length=2048)] = None,
        offset: Annotated[int, Query(ge=0, le=10_000)] = 0,
    ) -> None:
        self.limit = limit
        self.cursor = cursor
        self.offset = offset


PagingDep = Annotated[Paging, Depends()]
T = TypeVar("T")


async def fetch_page(fetch: Callable[[int, str | None], Awaitable[Page[T]]], paging: Paging) -> Page[T]:
    """One page by cursor; with `offset` (old clients) the skipped items are read and dropped."""
    cursor = paging.cursor
    if cursor is not None or paging.offset == 0:
        return await _fetch(fetch, paging.limit, cursor)
    to_skip = paging.offset
    while to_skip > 0:
        skipped = await _fetch(fetch, min(to_skip, 100), cursor)
        to_skip -= len(skipped.items)
        cursor = skipped.next_cursor
        if cursor is None:
            return Page([], None)
    return await _fetch(fetch, paging.limit, cursor)


async def _fetch(fetch: Callable[[int, str | None], Awaitable[Page[T]]], limit: int, cursor: str | None) -> Page[T]:
    try:
        return await fetch(limit, cursor)
    except InvalidCursor as exc:
        raise ValidationFailed.field("cursor", "is not a cursor this service made") from exc
