"""API key use cases: create, list, revoke, and authenticate a bot's request.

Keys are managed only by a logged-in user (a token or session), never with an API key. A request
signed with a key costs two reads (the key, then its owner) and a microsecond hash: the owner is
read every time so that a deactivated account or a password change takes effect at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import limits

from cnop.common.clock import Clock
from cnop.common.config import Settings
from cnop.common.dao.api_key_dao import ApiKeyDAO
from cnop.common.dao.user_dao import UserDAO
from cnop.common.entities.api_key import ApiKey, ApiKeyScope
from cnop.common.entities.user import User
from cnop.common.exceptions import (
    ApiKeyNotFound,
    InsufficientScope,
    InvalidApiKey,
    RateLimited,
    StoreError,
    ValidationFailed,
)
from cnop.common.security import AuditLogger
from cnop.common.security.api_key_hasher import KEY_ID_PATTERN, SECRET_PATTERN, ApiKeyHasher
from cnop.services.user.api_key_schemas import ApiKeyCreated, ApiKeyCreateRequest, ApiKeyInfo

# Noting a key's last use is a write: done when the address is new, else at most this often.
LAST_USED_RESOLUTION = timedelta(minutes=1)
CREATE_ATTEMPTS = 4


class Counters(Protocol):
    """Expiring counters (the gateway's rate-limit storage satisfies this)."""

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int: ...

    async def get_expiry(self, key: str) -> float: ...


@dataclass(frozen=True, slots=True)
class KeyPrincipal:
    """The caller of a route signed with an API key: the owner as stored now, and the key."""

    user: User
    key: ApiKey

    @property
    def username(self) -> str:
        return self.user.username

    def require(self, scope: ApiKeyScope) -> None:
        if not self.key.allows(scope):
            raise InsufficientScope(f"This API key has no {scope.value} scope")


class ApiKeyService:
    def __init__(
        self,
        keys: ApiKeyDAO,
        users: UserDAO,
        hasher: ApiKeyHasher,
        audit: AuditLogger,
        counters: Counters,
        settings: Settings,
        clock: Clock,
    ) -> None:
        self.keys = keys
        self.users = users
        self.hasher = hasher
        self.audit = audit
        self.counters = counters
        self.settings = settings
        self.clock = clock
        self.cap = settings.api_keys_per_user
        self._window = limits.parse(settings.rate_limit_per_api_key)

    def _dead(self, key: ApiKey, user: User) -> bool:
        return key.expired(self.clock.now()) or key.generation != user.token_generation

    async def create(self, user: User, request: ApiKeyCreateRequest, *, ip: str | None = None) -> ApiKeyCreated:
        """A new key and its secret, which is shown now and never again; dead keys make room."""
        now = self.clock.now()
        if request.expires_at is not None:
            if request.expires_at <= now:
                raise ValidationFailed.field("expires_at", "must be in the future")
            if request.expires_at > now + timedelta(days=self.settings.api_key_max_lifetime_days):
                raise ValidationFailed.field(
                    "expires_at", f"must be at most {self.settings.api_key_max_lifetime_days} days ahead"
                )
        key_id = self.hasher.new_key_id()
        secret = self.hasher.new_secret()
        key = ApiKey(
            key_id=key_id,
            username=user.username,
            label=request.label,
            scopes=frozenset(request.scopes),
            secret_hash=self.hasher.hash(key_id, secret),
            generation=user.token_generation,
            created_at=now,
            expires_at=request.expires_at,
        )
        for _ in range(CREATE_ATTEMPTS):
            dead = [old for old in await self.keys.get_api_keys_by_user(user.username) if self._dead(old, user)]
            try:
                await self.keys.create_api_key(key, self.cap, purge=dead)
            except StoreError:
                continue  # a purged key went meanwhile (its owner deleted it): read again
            for old in dead:
                reason = "expired" if old.expired(now) else "password_change"
                self.audit.log_api_key_revoked(user.username, old.key_id, reason=reason)
            break
        else:
            raise StoreError("the user's API keys kept changing; key not created")
        self.audit.log_api_key_created(user.username, key_id, ",".join(sorted(key.scopes)), ip_address=ip)
        info = ApiKeyInfo.of(key, now)
        return ApiKeyCreated(
            **info.model_dump(), secret=secret, message="Store the secret now: it is shown only this once"
        )

    async def list_keys(self, user: User) -> list[ApiKeyInfo]:
        """The user's keys, oldest first; keys a password change revoked are not shown."""
        now = self.clock.now()
        return [
            ApiKeyInfo.of(key, now)
            for key in await self.keys.get_api_keys_by_user(user.username)
            if key.generation == user.token_generation
        ]

    async def revoke(self, user: User, key_id: str) -> None:
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise ApiKeyNotFound()
        await self.keys.delete_api_key(user.username, key_id)
        self.audit.log_api_key_revoked(user.username, key_id, reason="deleted")

    async def revoke_all(self, username: str, reason: str) -> None:
        """Delete every key of the user (they stopped working already if their generation moved on)."""
        for key in await self.keys.get_api_keys_by_user(username):
            try:
                await self.keys.delete_api_key(username, key.key_id)
            except ApiKeyNotFound:
                continue
            self.audit.log_api_key_revoked(username, key.key_id, reason=reason)

    async def authenticate(self, key_id: str | None, secret: str | None, *, ip: str | None = None) -> KeyPrincipal:
        """The owner and key behind a bot's request; one 401 for every way it can be wrong."""
        if not key_id or not secret:
            raise InvalidApiKey("Send the APCA-API-KEY-ID and APCA-API-SECRET-KEY headers")
        well_formed = bool(KEY_ID_PATTERN.fullmatch(key_id)) and bool(SECRET_PATTERN.fullmatch(secret))
        key = await self.keys.get_api_key(key_id) if well_formed else None
        if not self.hasher.verify(key_id, secret, key.secret_hash if key is not None else None) or key is None:
            raise InvalidApiKey()
        user = await self.users.find_user(key.username)
        if user is None or self._dead(key, user):
            raise InvalidApiKey()
        await self._note_use(key, ip)
        return KeyPrincipal(user, key)

    async def _note_use(self, key: ApiKey, ip: str | None) -> None:
        now = self.clock.now()
        new_ip = ip is not None and ip not in key.known_ips
        stale = key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION
        if new_ip:
            self.audit.log_api_key_new_ip(key.username, key.key_id, ip)
        if new_ip or stale:
            await self.keys.record_use(key, now, ip)

    async def check_rate(self, key: ApiKey) -> None:
        """Count a request against the key's own window; over it, RateLimited (429 with Retry-After)."""
        window = self._window
        name = window.key_for("api_key", key.key_id)
        count = await self.counters.incr(name, window.get_expiry())
        reset = await self.counters.get_expiry(name)
        retry_after = max(1, int(reset - self.clock.timestamp()) + 1)
        if count > window.amount:
            raise RateLimited(
                f"Rate limit of {window} per API key exceeded; retry in {retry_after} s", retry_after=retry_after
            )
