"""API keys: how a bot signs its requests (a key id and a secret shown once)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class ApiKeyScope(StrEnum):
    """What a key may do: `read` the account, orders and positions; `trade` place and cancel."""

    READ = "read"
    TRADE = "trade"


class ApiKey(BaseModel):
    """An API key as stored; the secret itself is never kept, only its keyed hash."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    username: str
    label: str
    scopes: frozenset[ApiKeyScope]
    secret_hash: str
    # The owner's token generation when the key was made: a password change moves it on, which
    # revokes the key at once, whatever else is still to be cleaned up.
    generation: int
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    last_used_ip: str | None = None
    known_ips: tuple[str, ...] = ()

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def allows(self, scope: ApiKeyScope) -> bool:
        return scope in self.scopes
