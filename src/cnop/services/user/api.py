"""User service routes: parse, call one use case, shape the response."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query
from starlette.requests import Request
from starlette.responses import Response

from cnop.common.dao.balance_dao import entry_from_item
from cnop.common.entities.balance import TransactionType
from cnop.common.entities.order import ASSET_ID_PATTERN
from cnop.common.jsonio import ExactJSONResponse
from cnop.common.web.routing import ExactJSONRoute
from cnop.container import Container
from cnop.services.dependencies import ContainerDep, CurrentUser, PagingDep, client_ip, fetch_page
from cnop.services.idempotent import run_idempotent
from cnop.services.user.api_key_schemas import ApiKeyCreated, ApiKeyCreateRequest, ApiKeyList
from cnop.services.user.login import guarded_login, guarded_password_change
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
from cnop.services.user.service import Principal

router = APIRouter(prefix="/api/v1", route_class=ExactJSONRoute)
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


@router.post("/auth/register", status_code=201, response_model=UserEnvelope, tags=["auth"])
async def register(body: RegisterRequest, request: Request, container: ContainerDep) -> Response:
    user = await container.accounts.register(body, ip=client_ip(request))
    envelope = UserEnvelope(message="User registered successfully", user=UserProfile.of(user))
    return ExactJSONResponse(envelope, status_code=201)


@router.post("/auth/login", response_model=TokenResponse, tags=["auth"])
async def login(body: LoginRequest, request: Request, container: ContainerDep) -> Response:
    token = await guarded_login(container, body.username, body.password, client_ip(request))
    return ExactJSONResponse(TokenResponse(access_token=token.access_token, expires_in=token.expires_in))


@router.get("/auth/profile", response_model=UserProfile, tags=["auth"])
async def get_profile(principal: CurrentUser) -> Response:
    return ExactJSONResponse(UserProfile.of(principal.user))


@router.put("/auth/profile", response_model=UserEnvelope, tags=["auth"])
async def update_profile(body: ProfileUpdateRequest, principal: CurrentUser, container: ContainerDep) -> Response:
    user = await container.accounts.update_profile(principal, body)
    return ExactJSONResponse(UserEnvelope(message="Profile updated successfully", user=UserProfile.of(user)))


@router.post("/auth/logout", response_model=MessageResponse, tags=["auth"])
async def logout(request: Request, principal: CurrentUser, container: ContainerDep) -> Response:
    await container.accounts.logout(principal, ip=client_ip(request))
    return ExactJSONResponse(MessageResponse(message="Logged out successfully"))


@router.post("/auth/password", response_model=PasswordChangedResponse, tags=["auth"])
async def change_password(
    body: PasswordChangeRequest, request: Request, principal: CurrentUser, container: ContainerDep
) -> Response:
    token = await guarded_password_change(container, principal, body, client_ip(request))
    return ExactJSONResponse(
        PasswordChangedResponse(
            message="Password changed successfully; other sessions were signed out",
            access_token=token.access_token,
            expires_in=token.expires_in,
        )
    )


@router.post("/auth/api-keys", status_code=201, response_model=ApiKeyCreated, tags=["auth"])
async def create_api_key(
    body: ApiKeyCreateRequest, request: Request, principal: CurrentUser, container: ContainerDep
) -> Response:
    created = await container.api_keys.create(principal.user, body, ip=client_ip(request))
    return ExactJSONResponse(created, status_code=201)


@router.get("/auth/api-keys", response_model=ApiKeyList, tags=["auth"])
async def list_api_keys(principal: CurrentUser, container: ContainerDep) -> Response:
    keys = await container.api_keys.list_keys(principal.user)
    return ExactJSONResponse(ApiKeyList(data=keys, limit=container.settings.api_keys_per_user))


@router.delete("/auth/api-keys/{key_id}", status_code=204, tags=["auth"])
async def delete_api_key(
    key_id: Annotated[str, Path(max_length=64)], principal: CurrentUser, container: ContainerDep
) -> Response:
    await container.api_keys.revoke(principal.user, key_id)
    return Response(status_code=204)


@router.get("/balance", response_model=BalanceResponse, tags=["balance"])
async def get_balance(principal: CurrentUser, container: ContainerDep) -> Response:
    balance = await container.balance_dao.get_balance(principal.username)
    return ExactJSONResponse(BalanceResponse.of(balance))


async def move_cash(
    kind: Literal["deposit", "withdraw"],
    body: AmountRequest,
    request: Request,
    principal: Principal,
    container: Container,
    idempotency_key: str | None,
) -> Response:
    """A deposit or withdrawal under the client's idempotency key."""
    move = container.money.deposit if kind == "deposit" else container.money.withdraw
    return await run_idempotent(
        request,
        container.idempotency,
        username=principal.username,
        scope=kind,
        client_key=idempotency_key,
        payload={"amount": body.amount},
        work=lambda apply_op: move(principal.username, body.amount, apply_op),
        rebuild=lambda transaction_id: container.money.movement_of(principal.username, transaction_id),
    )


@router.post("/balance/deposit", status_code=201, response_model=MoneyMovementResponse, tags=["balance"])
async def deposit(
    body: AmountRequest,
    request: Request,
    principal: CurrentUser,
    container: ContainerDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await move_cash("deposit", body, request, principal, container, idempotency_key)


@router.post("/balance/withdraw", status_code=201, response_model=MoneyMovementResponse, tags=["balance"])
async def withdraw(
    body: AmountRequest,
    request: Request,
    principal: CurrentUser,
    container: ContainerDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await move_cash("withdraw", body, request, principal, container, idempotency_key)


@router.get("/balance/transactions", response_model=LedgerPage, tags=["balance"])
async def list_transactions(
    principal: CurrentUser,
    container: ContainerDep,
    paging: PagingDep,
    transaction_type: Annotated[TransactionType | None, Query()] = None,
) -> Response:
    page = await fetch_page(
        lambda limit, cursor: container.balance_dao.get_user_transactions(
            principal.username, limit=limit, cursor=cursor, transaction_type=transaction_type
        ),
        paging,
    )
    entries = [LedgerEntry.of(entry_from_item(item)) for item in page.items]
    return ExactJSONResponse(LedgerPage(transactions=entries, has_more=page.has_more, next_cursor=page.next_cursor))


@router.get("/portfolio", response_model=Portfolio, tags=["portfolio"])
async def get_portfolio(principal: CurrentUser, container: ContainerDep) -> Response:
    return ExactJSONResponse(await container.portfolio.portfolio(principal.username))


@router.get("/balance/asset/{asset_id}", response_model=AssetBalance, tags=["portfolio"])
async def get_asset_balance(
    asset_id: Annotated[str, Path(pattern=ASSET_ID_PATTERN)], principal: CurrentUser, container: ContainerDep
) -> Response:
    return ExactJSONResponse(await container.portfolio.asset_balance(principal.username, asset_id.upper()))
