"""A store that behaves like DynamoDB under contention, on any engine: the conflict simulator.

On DynamoDB a `TransactWriteItems` that touches an item another transaction is still writing is
cancelled (`TransactionConflict`); the engine (`DynamoDBStore._send_transaction`) sends it again
after a jittered back-off, a bounded number of times, and then gives up with
`TransactionConflict`. DynamoDB Local does not do this (it serializes everything), and SQLite
never conflicts, so without this wrapper the cost of an item every trade writes is invisible.

`ConflictingStore(inner)` passes every call to `inner`, but a `transact` whose items overlap
those of a transaction still in flight is cancelled: counted, then retried with the engine's own
`RetryPolicy` (same attempts, same back-off) or, with `retry=None`, raised at once. A
transaction is in flight for `latency` seconds (DynamoDB's service time for a TransactWriteItems:
its two phases, a few milliseconds to tens of them in a region), then `inner` applies it.

`burst(n)` holds the next `n` transactions until all `n` have arrived, then lets them go at
once: "64 concurrent buys" then means 64 first sends at the same instant, whatever the load of
the machine did to the requests before they reached the store.

The figures: `requests` (every send), `conflicts` (cancelled sends), `attempts` (sends per
`transact` call, in completion order) and `gave_up` (calls that ran out of attempts).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from cnop.common.database.dynamodb.store import RetryPolicy
from cnop.common.database.store import Item, ItemStore, Key, Op, Page, SortKey
from cnop.common.exceptions import TransactionConflict

ItemId = tuple[str, str, str]  # table, pk, sk


@dataclass
class ConflictingStore:
    inner: ItemStore
    latency: float = 0.02
    retry: RetryPolicy | None = field(default_factory=RetryPolicy)
    requests: int = 0
    conflicts: int = 0
    gave_up: int = 0
    attempts: list[int] = field(default_factory=list)
    _in_flight: Counter[ItemId] = field(default_factory=Counter)
    _gate: int = 0
    _gate_open: asyncio.Event | None = None
    _gate_timeout: float = 30.0

    def burst(self, transactions: int, *, timeout: float = 30.0) -> None:
        """Hold the next `transactions` transactions and release them together (or after `timeout`)."""
        self._gate, self._gate_open, self._gate_timeout = transactions, asyncio.Event(), timeout

    async def _through_gate(self) -> None:
        gate = self._gate_open
        if gate is None:
            return
        self._gate -= 1
        if self._gate <= 0:
            self._gate_open = None
            gate.set()
            return
        try:
            await asyncio.wait_for(gate.wait(), self._gate_timeout)
        except TimeoutError:
            self._gate_open = None
            gate.set()

    def reset(self) -> None:
        """Forget the figures so far (e.g. after setting a scenario up)."""
        self.requests = self.conflicts = self.gave_up = 0
        self.attempts = []

    @property
    def retries(self) -> list[int]:
        """Re-sends per `transact` call: 0 for one that went through at its first send."""
        return [n - 1 for n in self.attempts]

    async def transact(self, ops: Sequence[Op], *, token: str | None = None) -> None:
        items = {(op.table, op.key["pk"], op.key["sk"]) for op in ops}
        await self._through_gate()
        sends = 0
        try:
            while True:
                sends += 1
                self.requests += 1
                if not any(self._in_flight[item] for item in items):
                    break
                self.conflicts += 1
                if self.retry is None or sends >= self.retry.max_attempts:
                    self.gave_up += 1
                    raise TransactionConflict(f"transaction still conflicting after {sends} tries (simulated)")
                await asyncio.sleep(self.retry.delay(sends - 1))
            # In flight for DynamoDB's service time only: the engine below then applies it, and its
            # own queueing (SQLite's one writer, DynamoDB Local serializing everything) is not
            # DynamoDB's, so it does not widen the window (the figures match on both engines).
            self._in_flight.update(items)
            try:
                await asyncio.sleep(self.latency)
            finally:
                self._in_flight.subtract(items)
            await self.inner.transact(ops, token=token)
        finally:
            self.attempts.append(sends)

    # --- the rest of the port, unchanged ------------------------------------------------------

    async def create_tables(self) -> None:
        await self.inner.create_tables()

    async def get(self, table: str, key: Key, *, consistent: bool = True) -> Item | None:
        return await self.inner.get(table, key, consistent=consistent)

    async def batch_get(self, table: str, keys: Sequence[Key]) -> list[Item]:
        return await self.inner.batch_get(table, keys)

    async def query(
        self,
        table: str,
        pk: str,
        *,
        sk: SortKey | None = None,
        index: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        descending: bool = False,
        consistent: bool = True,
    ) -> Page:
        return await self.inner.query(
            table, pk, sk=sk, index=index, limit=limit, cursor=cursor, descending=descending, consistent=consistent
        )

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()
