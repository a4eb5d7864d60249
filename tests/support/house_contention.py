"""Many buyers, one asset, DynamoDB's conflicts simulated: the scenario of decision 0025.

`concurrent_buys` opens the app on a `ConflictingStore` over the given engine, registers and
funds `buyers` users (one each, so the house item is the only one their trades share), then sends
one market buy per user at once and reports what the store saw. The test
(tests/integration/test_house_contention.py) and the benchmark (benchmarks/house_conflicts.py)
both run it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cnop.audit import run_audit
from cnop.common.database.dynamodb.store import RetryPolicy
from tests.conftest import StoreFactory
from tests.support.api import funded_user, open_api
from tests.support.conflicting_store import ConflictingStore
from tests.support.house import house_totals


@dataclass(frozen=True)
class Contention:
    shards: int
    buyers: int
    completed: int  # 201 answers
    failed: int  # any other answer
    statuses: dict[int, int]
    conflicts: int  # cancelled sends
    requests: int  # every send of a transaction
    retries: list[int]  # re-sends per transaction of the burst
    gave_up: int
    seconds: float
    audit_ok: bool
    audit_violations: list[str]
    house_moved: str

    @property
    def max_retries(self) -> int:
        return max(self.retries, default=0)

    @property
    def mean_retries(self) -> float:
        return sum(self.retries) / len(self.retries) if self.retries else 0.0


async def concurrent_buys(
    store_factory: StoreFactory,
    *,
    shards: int,
    buyers: int = 64,
    quantity: str = "0.01",
    latency: float = 0.02,
    retry: RetryPolicy | None = None,
) -> Contention:
    wrapped: list[ConflictingStore] = []

    def factory() -> ConflictingStore:
        store = ConflictingStore(store_factory(), latency=latency, retry=retry or RetryPolicy())
        wrapped.append(store)
        return store

    # No price-history flushes: only the buys write during the burst.
    api, lifespan = await open_api(factory, house_shards=shards, price_history_flush_seconds=0, log_level="WARNING")
    try:
        store = wrapped[0]
        users = [await funded_user(api, "10000") for _ in range(buyers)]
        api.set_price("BTC", "50000")
        before = await house_totals(store, "BTC")
        store.reset()
        store.burst(buyers)
        loop = asyncio.get_running_loop()
        started = loop.time()
        answers = await asyncio.gather(
            *(api.order(headers, order_type="market_buy", asset_id="BTC", quantity=quantity) for _, headers in users)
        )
        seconds = loop.time() - started
        figures = (store.conflicts, store.requests, store.retries, store.gave_up)
        statuses: dict[int, int] = {}
        for answer in answers:
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        after = await house_totals(store, "BTC")
        report = await run_audit(store)
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)
    completed = statuses.get(201, 0)
    return Contention(
        shards=shards,
        buyers=buyers,
        completed=completed,
        failed=buyers - completed,
        statuses=statuses,
        conflicts=figures[0],
        requests=figures[1],
        retries=figures[2],
        gave_up=figures[3],
        seconds=seconds,
        audit_ok=report.ok,
        audit_violations=report.violations,
        house_moved=str(before["quantity"] - after["quantity"]),
    )
