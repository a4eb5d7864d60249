"""A store that wraps a real engine and fails one chosen call: the fault injector at the port.

Each call of the port (`get`, `batch_get`, `query`, `transact`) made while the store is armed
gets a number, 0, 1, 2, ...; the call numbered `fail_at` fails the way `fault` says:

- `ERROR`: raises `StoreError` before the engine sees the call (an outage: nothing happens);
- `TIMEOUT`: raises `StoreError` after the engine applied the call (the answer was lost on the
  way back, the ambiguous case: for `transact` the writes ARE in the store).

It also remembers, for every item a transaction wrote or tried to write, what the item was
before its first write, so a test can list exactly what changed (`changes()`), on any engine,
without scanning a table.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cnop.common.database.store import Item, ItemStore, Key, Op, StoreWrapper
from cnop.common.exceptions import StoreError

T = TypeVar("T")
ItemId = tuple[str, str, str]  # table, pk, sk


class Fault(enum.Enum):
    ERROR = "error"
    TIMEOUT = "timeout"


class InjectedFault(StoreError):
    """The failure a `FaultyStore` raised on purpose."""


@dataclass
class Change:
    before: Item | None
    after: Item | None


@dataclass
class FaultyStore(StoreWrapper):
    """Every call of the port passes `around` (see `StoreWrapper`), which numbers and fails it."""

    inner: ItemStore
    armed: bool = False
    fail_at: int | None = None
    fault: Fault = Fault.ERROR
    only: str | None = None
    calls: list[str] = field(default_factory=list)
    injected: str | None = None
    _before: dict[ItemId, Item | None] = field(default_factory=dict)
    _tables: dict[ItemId, tuple[str, Key]] = field(default_factory=dict)

    def arm(self, fail_at: int | None = None, fault: Fault = Fault.ERROR, only: str | None = None) -> None:
        """Start numbering calls (and tracking writes); fail call `fail_at` (None: fail none).

        With `only` (e.g. "transact"), `fail_at` counts only the calls of that method, so a read
        that a cache sometimes saves does not shift which write fails.
        """
        self.armed, self.fail_at, self.fault, self.only = True, fail_at, fault, only
        self.calls, self.injected = [], None
        self._before, self._tables = {}, {}

    def disarm(self) -> None:
        """Stop failing and numbering calls, but keep the record of what changed."""
        self.fail_at = None

    async def around(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        if not self.armed:
            return await call()
        index = len(self.calls) if self.only is None else self.calls.count(self.only)
        self.calls.append(name)
        if index != self.fail_at or (self.only is not None and name != self.only):
            return await call()
        self.injected = f"{self.fault.value} at call {index} ({name})"
        if self.fault is Fault.ERROR:
            raise InjectedFault(f"injected store error at call {index} ({name})")
        await call()
        raise InjectedFault(f"injected timeout after call {index} ({name}) was applied")

    async def _transact(self, ops: list[Op], token: str | None) -> None:
        if self.armed:
            await self._remember(ops)
        await super()._transact(ops, token)

    # --- what changed -------------------------------------------------------------------------

    async def _remember(self, ops: Sequence[Op]) -> None:
        for op in ops:
            ident = (op.table, op.key["pk"], op.key["sk"])
            if ident not in self._before:
                self._before[ident] = await self.inner.get(op.table, op.key)
                self._tables[ident] = (op.table, dict(op.key))

    async def changes(self) -> dict[ItemId, Change]:
        """Every item written since `arm()` whose value differs from before its first write."""
        changed: dict[ItemId, Change] = {}
        for ident, before in self._before.items():
            table, key = self._tables[ident]
            after = await self.inner.get(table, key)
            if after != before:
                changed[ident] = Change(before, after)
        return changed
