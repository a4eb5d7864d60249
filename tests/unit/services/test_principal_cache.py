"""The principal cache: token id → principal, dropped by the invalidation channel, never stale.

Unit level (the cache itself, and `AccountService.principal_for` over a store that counts its
reads); the HTTP behaviour (logout, password change, profile change take effect at once) is in
tests/api/test_principal_cache.py and, across processes, tests/system/test_shared_state_processes.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from cnop.common.security import TokenClaims
from cnop.common.shared.invalidation import ALL, TOKEN, USER, LocalInvalidations
from cnop.services.user.principal_cache import PrincipalCache

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def claims(sub: str = "alice", jti: str = "j1", generation: int = 0) -> TokenClaims:
    return TokenClaims(sub=sub, role="customer", jti=jti, generation=generation, iat=NOW, exp=NOW + timedelta(hours=1))


@dataclass(frozen=True)
class P:
    claims: TokenClaims

    @property
    def username(self) -> str:
        return self.claims.sub


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Channel(LocalInvalidations):
    def __init__(self) -> None:
        super().__init__()
        self.up = True

    @property
    def connected(self) -> bool:
        return self.up


def make(ttl: float = 30.0) -> tuple[PrincipalCache[P], Channel, Clock]:
    channel, clock = Channel(), Clock()
    return PrincipalCache(channel, ttl_seconds=ttl, monotonic=clock), channel, clock


def test_a_remembered_principal_is_returned_for_the_same_claims_only() -> None:
    cache, _, _ = make()
    principal = P(claims())
    cache.put(principal, cache.epoch)
    assert cache.get(claims()) is principal
    assert cache.get(claims(jti="j2")) is None
    assert cache.get(claims(generation=1)) is None  # same id, other claims: not this token
    assert cache.get(claims()) is None  # and the odd entry is gone


async def test_logout_drops_the_token_and_a_user_change_drops_every_token_of_the_user() -> None:
    cache, channel, _ = make()
    a1, a2, b1 = P(claims("alice", "a1")), P(claims("alice", "a2")), P(claims("bob", "b1"))
    for principal in (a1, a2, b1):
        cache.put(principal, cache.epoch)
    await channel.publish(TOKEN, "a1")
    assert cache.get(a1.claims) is None
    assert cache.get(a2.claims) is a2
    await channel.publish(USER, "alice")
    assert cache.get(a2.claims) is None
    assert cache.get(b1.claims) is b1
    await channel.publish(USER, ALL)
    assert cache.get(b1.claims) is None
    assert len(cache) == 0


async def test_a_read_that_began_before_an_invalidation_is_not_remembered() -> None:
    cache, channel, _ = make()
    epoch = cache.epoch  # the read starts
    await channel.publish(USER, "alice")  # a change commits meanwhile
    cache.put(P(claims()), epoch)  # the read's (older) answer arrives
    assert cache.get(claims()) is None


def test_entries_expire_and_the_cache_is_bypassed_while_the_channel_is_cut() -> None:
    cache, channel, clock = make(ttl=30.0)
    principal = P(claims())
    cache.put(principal, cache.epoch)
    channel.up = False
    assert cache.get(claims()) is None  # messages may be missed: not trusted
    cache.put(P(claims(jti="j2")), cache.epoch)
    channel.up = True
    assert cache.get(claims(jti="j2")) is None  # nor remembered while cut
    assert cache.get(claims()) is principal
    clock.now += 30.0
    assert cache.get(claims()) is None


def test_zero_seconds_disables_it_and_the_size_is_bounded() -> None:
    off, _, _ = make(ttl=0)
    off.put(P(claims()), off.epoch)
    assert off.get(claims()) is None and not off.enabled
    channel = Channel()
    small: PrincipalCache[P] = PrincipalCache(channel, ttl_seconds=30.0, max_entries=3)
    for n in range(10):
        small.put(P(claims(jti=f"j{n}")), small.epoch)
    assert 1 <= len(small) <= 3


class CountingUsers:
    """A UserDAO stand-in that counts the reads of `principal_for`."""

    def __init__(self, user: object) -> None:
        self.user = user
        self.reads = 0

    async def find_user_with_live_token(self, username: str, jti: str) -> object:
        self.reads += 1
        return self.user


@pytest.mark.parametrize("seconds", [30.0, 0.0])
async def test_principal_for_reads_the_store_once_per_token(seconds: float) -> None:
    from cnop.common.entities.user import User
    from cnop.services.user.service import AccountService

    user = User(
        username="alice",
        email="alice@example.com",
        first_name="A",
        last_name="L",
        password_hash="x",
        created_at=NOW,
        updated_at=NOW,
    )
    users = CountingUsers(user)
    channel = LocalInvalidations()
    accounts = AccountService(
        None,  # type: ignore[arg-type]
        users,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        invalidations=channel,
        principal_cache_seconds=seconds,
    )
    for _ in range(3):
        principal = await accounts.principal_for(claims())
        assert principal.user is user
    assert users.reads == (1 if seconds else 3)
    await channel.publish(TOKEN, "j1")
    await accounts.principal_for(claims())
    assert users.reads == (2 if seconds else 4)
