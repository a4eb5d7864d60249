"""Dependencies shared by every service's routes: the container, the caller, paging."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, cast

from fastapi import Depends, Query
from starlette.requests import Request

from cnop.common.database.store import InvalidCursor, Page
from cnop.common.exceptions import AuthenticationRequired, Forbidden, InvalidToken, ValidationFailed
from cnop.common.security import TokenClaims
from cnop.common.web.request_user import bind_request_user
from cnop.container import Container
from cnop.services.user.service import Principal


async def get_container(request: Request) -> Container:
    # async: FastAPI would run a plain function in a thread pool on every request
    return cast("Container", request.app.state.container)


ContainerDep = Annotated[Container, Depends(get_container)]


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; anything else is a 401."""
    if not header:
        raise AuthenticationRequired()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or " " in token.strip() or not token.strip():
        raise InvalidToken("The Authorization header must be 'Bearer <token>'")
    return token.strip()


def verified_claims(request: Request, container: Container) -> TokenClaims:
    """Claims verified once per request (the rate limiter may already have done it)."""
    state = request.scope.setdefault("state", {})
    claims = state.get("token_claims")
    if isinstance(claims, TokenClaims):
        return claims
    claims = container.tokens.verify_access_token(bearer_token(request.headers.get("authorization")))
    state["token_claims"] = claims
    return claims


async def current_principal(request: Request, container: ContainerDep) -> Principal:
    principal = await container.accounts.principal_for(verified_claims(request, container))
    bind_request_user(request, principal.username)
    return principal


async def current_admin(
    request: Request, principal: Annotated[Principal, Depends(current_principal)], container: ContainerDep
) -> Principal:
    if not principal.is_admin:
        container.audit.log_access_denied(principal.username, resource=request.url.path, reason="admin_required")
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


async def fetch_page(fetch: Callable[[int, str | None], Awaitable[Page]], paging: Paging) -> Page:
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


async def _fetch(fetch: Callable[[int, str | None], Awaitable[Page]], limit: int, cursor: str | None) -> Page:
    try:
        return await fetch(limit, cursor)
    except InvalidCursor as exc:
        raise ValidationFailed.field("cursor", "is not a cursor this service made") from exc
