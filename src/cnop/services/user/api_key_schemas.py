"""Request and response shapes of API key management (`/api/v1/auth/api-keys`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from cnop.common.entities.api_key import ApiKey, ApiKeyScope


def _label(value: str) -> str:
    label = value.strip()
    if not label:
        raise ValueError("must not be empty")
    if not all(char.isprintable() for char in label):
        raise ValueError("must be printable text")
    return label


def _scopes(value: list[ApiKeyScope]) -> list[ApiKeyScope]:
    if not value:
        raise ValueError("must name at least one of read, trade")
    return sorted(set(value))


class ApiKeyCreateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    label: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_label)]
    scopes: Annotated[list[ApiKeyScope], Field(max_length=4), AfterValidator(_scopes)] = [
        ApiKeyScope.READ,
        ApiKeyScope.TRADE,
    ]
    expires_at: AwareDatetime | None = None


class ApiKeyInfo(BaseModel):
    """A key as its owner sees it later: never the secret, nor its hash."""

    key_id: str
    label: str
    scopes: list[ApiKeyScope]
    created_at: datetime
    expires_at: datetime | None
    expired: bool
    last_used_at: datetime | None
    last_used_ip: str | None

    @classmethod
    def of(cls, key: ApiKey, now: datetime) -> ApiKeyInfo:
        return cls(
            key_id=key.key_id,
            label=key.label,
            scopes=sorted(key.scopes),
            created_at=key.created_at,
            expires_at=key.expires_at,
            expired=key.expired(now),
            last_used_at=key.last_used_at,
            last_used_ip=key.last_used_ip,
        )


class ApiKeyCreated(ApiKeyInfo):
    """The answer to a creation: the only time the secret is ever shown."""

    secret: str
    message: str


class ApiKeyList(BaseModel):
    data: list[ApiKeyInfo]
    limit: int
