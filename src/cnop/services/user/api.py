"""User service routes: parse, call one use case, shape the response."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query
from starlette.requests import Request
from starlette.responses import Response

from cnop.common.entities.balance import TransactionType
from cnop.common.entities.order import ASSET_ID_PATTERN
from cnop.common.idempotency import IdempotencyRecords
from cnop.common.jsonio import ExactJSONResponse
from cnop.common.web.routing import ExactJSONRoute
from cnop.services.dependencies import (
    Accounts,
    ApiKeys,
    AppSettings,
    Balances,
    CurrentUser,
    Idempotency,
    Money,
    PagingDep,
    Portfolios,
    client_ip,
    fetch_page,
)
from cnop.services.idempotent import run_idempotent
from cnop.services.user.api_key_schemas import ApiKeyCreated, ApiKeyCreateRequest, ApiKeyList
from cnop.services.user.login import Logins
from cnop.services.user.portfolio import AssetBalance, Portfolio
from cnop.services.user.schemas import (
    AmountRequest,
    BalanceResponse,
    LedgerEntry,
    LedgerPage,
    LoginRequest,
    MessageResponse,
    MoneyMovementResponse,
    PasswordChangedResponse,
    PasswordChangeRequest,
    ProfileUpdateRequest,
    RegisterRequest,
    TokenResponse,
    UserEnvelope,
    UserProfile,
)
from cnop.services.user.service import MoneyService, Principal

router = APIRouter(prefix="/api/v1", route_class=ExactJSONRoute)
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


@router.post("/auth/register", status_code=201, response_model=UserEnvelope, tags=["auth"])
async def register(body: RegisterRequest, request: Request, accounts: Accounts) -> Response:
    user = await accounts.register(body, ip=client_ip(request))
    envelope = UserEnvelope(message="User registered successfully", user=UserProfile.of(user))
    return ExactJSONResponse(envelope, status_code=201)


@router.post("/auth/login", response_model=TokenResponse, tags=["auth"])
async def login(body: LoginRequest, request: Request, logins: Logins) -> Response:
    token = await logins.login(body.username, body.password, client_ip(request))
    return ExactJSONResponse(TokenResponse(access_token=token.access_token, expires_in=token.expires_in))


@router.get("/auth/profile", response_model=UserProfile, tags=["auth"])
async def get_profile(principal: CurrentUser) -> Response:
    return ExactJSONResponse(UserProfile.wire(principal.user))


@router.put("/auth/profile", response_model=UserEnvelope, tags=["auth"])
async def update_profile(body: ProfileUpdateRequest, principal: CurrentUser, accounts: Accounts) -> Response:
    user = await accounts.update_profile(principal, body)
    return ExactJSONResponse(UserEnvelope(message="Profile updated successfully", user=UserProfile.of(user)))


@router.post("/auth/logout", response_model=MessageResponse, tags=["auth"])
async def logout(request: Request, principal: CurrentUser, accounts: Accounts) -> Response:
    await accounts.logout(principal, ip=client_ip(request))
    return ExactJSONResponse(MessageResponse(message="Logged out successfully"))


@router.post("/auth/password", response_model=PasswordChangedResponse, tags=["auth"])
async def change_password(
    body: PasswordChangeRequest, request: Request, principal: CurrentUser, logins: Logins
) -> Response:
    token = await logins.change_password(principal, body, client_ip(request))
    return ExactJSONResponse(
        PasswordChangedResponse(
            message="Password changed successfully; other sessions were signed out",
            access_token=token.access_token,
            expires_in=token.expires_in,
        )
    )


@router.post("/auth/api-keys", status_code=201, response_model=ApiKeyCreated, tags=["auth"])
async def create_api_key(
    body: ApiKeyCreateRequest, request: Request, principal: CurrentUser, api_keys: ApiKeys
) -> Response:
    created = await api_keys.create(principal.user, body, ip=client_ip(request))
    return ExactJSONResponse(created, status_code=201)


@router.get("/auth/api-keys", response_model=ApiKeyList, tags=["auth"])
async def list_api_keys(principal: CurrentUser, api_keys: ApiKeys, settings: AppSettings) -> Response:
    keys = await api_keys.list_keys(principal.user)
    return ExactJSONResponse(ApiKeyList(data=keys, limit=settings.api_keys_per_user))


@router.delete("/auth/api-keys/{key_id}", status_code=204, tags=["auth"])
async def delete_api_key(
    key_id: Annotated[str, Path(max_length=64)], principal: CurrentUser, api_keys: ApiKeys
) -> Response:
    await api_keys.revoke(principal.user, key_id)
    return Response(status_code=204)


@router.get("/balance", response_model=BalanceResponse, tags=["balance"])
async def get_balance(principal: CurrentUser, balances: Balances) -> Response:
    balance = await balances.get_balance(principal.username)
    return ExactJSONResponse(BalanceResponse.wire(balance))


@dataclass(frozen=True, slots=True)
class CashMove:
    """What a deposit or a withdrawal needs, resolved by FastAPI once for either route."""

    request: Request
    principal: Principal
    money: MoneyService
    idempotency: IdempotencyRecords
    idempotency_key: str | None

    async def run(self, kind: Literal["deposit", "withdraw"], body: AmountRequest) -> Response:
        """A deposit or withdrawal under the client's idempotency key."""
        username = self.principal.username
        move = self.money.deposit if kind == "deposit" else self.money.withdraw
        return await run_idempotent(
            self.request,
            self.idempotency,
            username=username,
            scope=kind,
            client_key=self.idempotency_key,
            payload={"amount": body.amount},
            work=lambda: move(username, body.amount),
            rebuild=lambda transaction_id: self.money.movement_of(username, transaction_id),
        )


async def cash_move(
    request: Request,
    principal: CurrentUser,
    money: Money,
    idempotency: Idempotency,
    idempotency_key: IdempotencyKey = None,
) -> CashMove:
    return CashMove(request, principal, money, idempotency, idempotency_key)


CashMoveDep = Annotated[CashMove, Depends(cash_move)]


@router.post("/balance/deposit", status_code=201, response_model=MoneyMovementResponse, tags=["balance"])
async def deposit(body: AmountRequest, cash: CashMoveDep) -> Response:
    return await cash.run("deposit", body)


@router.post("/balance/withdraw", status_code=201, response_model=MoneyMovementResponse, tags=["balance"])
async def withdraw(body: AmountRequest, cash: CashMoveDep) -> Response:
    return await cash.run("withdraw", body)


@router.get("/balance/transactions", response_model=LedgerPage, tags=["balance"])
async def list_transactions(
    principal: CurrentUser,
    balances: Balances,
    paging: PagingDep,
    transaction_type: Annotated[TransactionType | None, Query()] = None,
) -> Response:
    page = await fetch_page(
        lambda limit, cursor: balances.get_user_transactions(
            principal.username, limit=limit, cursor=cursor, transaction_type=transaction_type
        ),
        paging,
    )
    entries = [LedgerEntry.of(entry) for entry in page.items]
    return ExactJSONResponse(LedgerPage(transactions=entries, has_more=page.has_more, next_cursor=page.next_cursor))


@router.get("/portfolio", response_model=Portfolio, tags=["portfolio"])
async def get_portfolio(principal: CurrentUser, portfolios: Portfolios) -> Response:
    return ExactJSONResponse(await portfolios.portfolio_wire(principal.username))


@router.get("/balance/asset/{asset_id}", response_model=AssetBalance, tags=["portfolio"])
async def get_asset_balance(
    asset_id: Annotated[str, Path(pattern=ASSET_ID_PATTERN)], principal: CurrentUser, portfolios: Portfolios
) -> Response:
    return ExactJSONResponse(await portfolios.asset_balance(principal.username, asset_id.upper()))
