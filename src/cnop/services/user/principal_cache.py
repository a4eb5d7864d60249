"""Principals remembered by token id, so that a token's requests after its first read nothing.

Resolving the caller of a request reads the user and the token's revocation record from the
store (one batch read and a hop to the store thread). That answer only changes when the user's
stored record changes (profile, password, role) or the token is revoked (logout), and every one
of those writes announces itself on the invalidation channel (`cnop.common.shared.invalidation`):

- `TOKEN` `jti`: the token was revoked; its entry goes.
- `USER` `username`: the user's record changed; every entry of that user goes.
- `ALL` on either topic (the Redis listener reconnected and may have missed messages): all go.

With one process the channel is exact (handlers run inside `publish`). With Redis, another
process's change arrives within milliseconds, before the client that made it can send its next
request; while this process's listener is cut off from Redis (`connected` false) the cache is
not consulted, and on reconnecting the listener drops everything. `ttl_seconds` bounds what a
lost message can cost beyond that.

A read that started before an invalidation is not remembered (the `epoch` taken before the read
must still hold when it is stored), so an answer read just before a change cannot outlive it.
Token expiry is not this cache's business: the caller verifies the token (expiry included) on
every request before asking.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from cnop.common.security import TokenClaims
from cnop.common.shared.invalidation import ALL, TOKEN, USER, Invalidations

DEFAULT_MAX_ENTRIES = 100_000


class _HasClaims(Protocol):
    @property
    def claims(self) -> TokenClaims: ...

    @property
    def username(self) -> str: ...


P = TypeVar("P", bound=_HasClaims)


class PrincipalCache(Generic[P]):
    """token id → principal, bounded, dropped through the invalidation channel (see the module)."""

    def __init__(
        self,
        invalidations: Invalidations,
        *,
        ttl_seconds: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._invalidations = invalidations
        self._ttl = ttl_seconds
        self._max = max_entries
        self._monotonic = monotonic
        self._entries: dict[str, tuple[P, float]] = {}
        self._by_user: dict[str, set[str]] = {}
        self._epoch = 0
        invalidations.subscribe(TOKEN, self._on_token)
        invalidations.subscribe(USER, self._on_user)

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    @property
    def epoch(self) -> int:
        """Moves on at every invalidation: take it before a read, hand it to `put` after."""
        return self._epoch

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, claims: TokenClaims) -> P | None:
        """The principal remembered for this token, or None (not remembered, expired, channel cut)."""
        entry = self._entries.get(claims.jti)
        if entry is None:
            return None
        principal, expires = entry
        if expires <= self._monotonic() or principal.claims != claims:
            self._forget(claims.jti)
            return None
        if not self._invalidations.connected:
            return None
        return principal

    def put(self, principal: P, epoch: int) -> None:
        """Remember `principal`, read when `epoch` was current, unless an invalidation came since."""
        if not self.enabled or epoch != self._epoch or not self._invalidations.connected:
            return
        if len(self._entries) >= self._max:
            self.forget_all()
        jti = principal.claims.jti
        self._entries[jti] = (principal, self._monotonic() + self._ttl)
        self._by_user.setdefault(principal.username, set()).add(jti)

    def forget_token(self, jti: str) -> None:
        self._epoch += 1
        self._forget(jti)

    def forget_user(self, username: str) -> None:
        self._epoch += 1
        for jti in list(self._by_user.get(username, ())):
            self._forget(jti)

    def forget_all(self) -> None:
        self._epoch += 1
        self._entries.clear()
        self._by_user.clear()

    def _on_token(self, jti: str) -> None:
        if jti == ALL:
            self.forget_all()
        else:
            self.forget_token(jti)

    def _on_user(self, username: str) -> None:
        if username == ALL:
            self.forget_all()
        else:
            self.forget_user(username)

    def _forget(self, jti: str) -> None:
        entry = self._entries.pop(jti, None)
        if entry is None:
            return
        username = entry[0].username
        jtis = self._by_user.get(username)
        if jtis is not None:
            jtis.discard(jti)
            if not jtis:
                del self._by_user[username]
