"""Who signs a compat request: an API key, in Alpaca's two headers, checked on every request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from cnop.common.entities.api_key import ApiKeyScope
from cnop.common.web.request_user import bind_request_user
from cnop.services.dependencies import ApiKeys, client_ip
from cnop.services.user.api_keys import KeyPrincipal

KEY_ID_HEADER = "APCA-API-KEY-ID"
SECRET_HEADER = "APCA-API-SECRET-KEY"


async def key_principal(request: Request, api_keys: ApiKeys) -> KeyPrincipal:
    principal = await api_keys.authenticate(
        request.headers.get(KEY_ID_HEADER), request.headers.get(SECRET_HEADER), ip=client_ip(request)
    )
    bind_request_user(request, principal.username)
    await api_keys.check_rate(principal.key)
    return principal


async def reader(principal: Annotated[KeyPrincipal, Depends(key_principal)]) -> KeyPrincipal:
    principal.require(ApiKeyScope.READ)
    return principal


async def trader(principal: Annotated[KeyPrincipal, Depends(key_principal)]) -> KeyPrincipal:
    principal.require(ApiKeyScope.TRADE)
    return principal


Reader = Annotated[KeyPrincipal, Depends(reader)]
Trader = Annotated[KeyPrincipal, Depends(trader)]
