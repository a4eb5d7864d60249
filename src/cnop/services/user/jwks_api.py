"""`GET /.well-known/jwks.json`: the public keys that verify access tokens, for outside verifiers.

In the cloud shape the user service serves it (the only signer); every key carries its `kid`, so
during a rotation old and new keys are listed together. With HS256 (the local shape) the set is
empty: a shared secret is never published.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from cnop.common.jsonio import ExactJSONResponse
from cnop.services.dependencies import Tokens

router = APIRouter(tags=["auth"])
# Keys change only by a deployment; a verifier may cache the set for a few minutes.
_CACHE = {"Cache-Control": "public, max-age=300"}


class JsonWebKey(BaseModel):
    model_config = ConfigDict(extra="allow")

    kty: str
    kid: str
    alg: str
    use: str


class JsonWebKeySet(BaseModel):
    keys: list[JsonWebKey]


@router.get("/.well-known/jwks.json", response_model=JsonWebKeySet)
async def read_jwks(tokens: Tokens) -> ExactJSONResponse:
    return ExactJSONResponse(tokens.jwks(), headers=_CACHE)
