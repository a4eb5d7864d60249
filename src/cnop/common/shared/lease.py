"""A lease in Redis with a fencing token: one holder at a time, and a token that only grows.

`FencedLease(shared, name, holder, ttl_seconds)` keeps two keys:

- `{prefix}lease:{name}`: the current holder's `"{token}:{holder}"`, with a TTL (`SET NX PX`);
- `{prefix}lease:{name}:token`: a counter, `INCR`ed at every acquisition, never expiring, so every
  new holder's token is greater than every earlier one's.

`acquire()` takes the lease if nobody holds it (or returns the token this holder already has);
`renew()` extends it only if this holder still has it (a Lua script compares the value, so a
holder whose lease expired and was taken by another can never extend the other's); `release()`
deletes it under the same check. A holder that stalls past the TTL loses the lease: the next
`acquire()` elsewhere gets a greater token, and any write the old holder still attempts must be
fenced, i.e. made by a script that compares the lease's current value first (`fence` is that
value; see `cnop.market.bus` for the price stream's fenced XADD).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cnop.common.shared.redis import SharedRedis

# KEYS[1] the lease, KEYS[2] its token counter; ARGV[1] holder id, ARGV[2] TTL in ms.
ACQUIRE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current then
  local token, holder = string.match(current, '^(%d+):(.*)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
return token
"""
# KEYS[1] the lease; ARGV[1] the value this holder set, ARGV[2] TTL in ms.
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass
class FencedLease:
    """One process's view of a named lease (see the module)."""

    shared: SharedRedis
    name: str
    holder: str
    ttl_seconds: float
    token: int | None = None
    #: Monotonic time until which this holder may assume it still holds the lease.
    valid_until: float = 0.0

    def __post_init__(self) -> None:
        if self.ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if ":" in self.name:
            raise ValueError("a lease name has no ':'")
        client = self.shared.client
        self._acquire = client.register_script(ACQUIRE_SCRIPT)
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)

    @property
    def key(self) -> str:
        return self.shared.key("lease", self.name)

    @property
    def token_key(self) -> str:
        return self.shared.key("lease", self.name, "token")

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.ttl_seconds * 1000))

    @property
    def fence(self) -> str | None:
        """The lease's value while this holder has it (what a fenced write compares), else None."""
        return None if self.token is None else f"{self.token}:{self.holder}"

    @property
    def held(self) -> bool:
        """True while this holder has the lease by its own reckoning (renewed within the TTL)."""
        return self.token is not None and time.monotonic() < self.valid_until

    async def acquire(self) -> int | None:
        """Take the lease if it is free (or already ours): the fencing token, else None."""
        started = time.monotonic()
        token = int(await self._acquire(keys=[self.key, self.token_key], args=[self.holder, self.ttl_ms]))
        if token <= 0:
            self.token = None
            return None
        self.token = token
        self.valid_until = started + self.ttl_seconds
        return token

    async def renew(self) -> bool:
        """Extend the lease if this holder still has it; False (and forgotten) if not."""
        fence = self.fence
        if fence is None:
            return False
        started = time.monotonic()
        if int(await self._renew(keys=[self.key], args=[fence, self.ttl_ms])) == 1:
            self.valid_until = started + self.ttl_seconds
            return True
        self.lost()
        return False

    async def release(self) -> None:
        """Give the lease up now (a clean shutdown), so another holder need not wait for the TTL."""
        fence = self.fence
        self.lost()
        if fence is not None:
            await self._release(keys=[self.key], args=[fence])

    def lost(self) -> None:
        self.token = None
        self.valid_until = 0.0

    async def current(self) -> tuple[int, str] | None:
        """(token, holder) of whoever holds the lease now, or None."""
        value = await self.shared.client.get(self.key)
        if not value:
            return None
        token, _, holder = str(value).partition(":")
        return int(token), holder
