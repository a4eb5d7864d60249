"""64 concurrent buys of one asset on a store that conflicts as DynamoDB does (decision 0025).

The store wrapper (tests/support/conflicting_store.py) cancels a transaction that overlaps one
still in flight and retries it with the DynamoDB engine's own policy. Each transaction stays in
flight 50 ms, and the 64 buys reach the store at the same instant (`burst`), so the outcome
with one house item does not depend on the machine's load: the engine's back-off gives each
transaction at most about 2.3 s of retries, the single item lets one transaction through per
50 ms, so at most 47 of the 64 can get through and the rest fail (503, nothing applied). With
the house in 32 shards, every buy completes, with a few bounded retries. The audit is exact in
both. `benchmarks/house_conflicts.py` reports the same scenario's figures at 1 to 64 shards.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from cnop.common.database.dynamodb.store import RetryPolicy
from tests.conftest import StoreFactory
from tests.support.house_contention import concurrent_buys

pytestmark = pytest.mark.slow

LATENCY = 0.05
BUYERS = 64


async def test_64_concurrent_buys_on_one_house_item_run_out_of_retries(store_factory: StoreFactory) -> None:
    single = await concurrent_buys(store_factory, shards=1, buyers=BUYERS, latency=LATENCY)
    policy = RetryPolicy()
    assert single.gave_up >= 1 and single.failed == single.gave_up, single
    assert set(single.statuses) <= {201, 503}, single.statuses
    assert single.max_retries == policy.max_attempts - 1
    assert single.conflicts >= single.failed * policy.max_attempts
    assert single.audit_ok, single.audit_violations
    assert Decimal(single.house_moved) == Decimal("0.01") * single.completed


async def test_64_concurrent_buys_on_32_house_shards_all_complete_with_bounded_retries(
    store_factory: StoreFactory,
) -> None:
    sharded = await concurrent_buys(store_factory, shards=32, buyers=BUYERS, latency=LATENCY)
    assert sharded.statuses == {201: BUYERS}, sharded
    assert sharded.gave_up == 0
    # Two buys per shard: the second of each pair is cancelled, waits its turn and goes through.
    assert sharded.conflicts >= 1
    assert sharded.audit_ok, sharded.audit_violations
    assert Decimal(sharded.house_moved) == Decimal("0.01") * BUYERS
