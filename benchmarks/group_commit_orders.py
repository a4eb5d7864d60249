"""Market orders through the whole app in process, many at once: SQLite group commit on vs off.

    .venv/bin/python -m benchmarks.group_commit_orders
    GC_USERS=64 GC_ORDERS=1500 GC_ATTEMPTS=4 .venv/bin/python -m benchmarks.group_commit_orders

Two apps in this process (as `benchmarks/scale_bench.py` builds them), one store with group
commit and one without (`CNOP_SQLITE_GROUP_COMMIT=false`). Each attempt sends `GC_ORDERS` market
orders (buy, then sell, 0.0001 BTC) from `GC_USERS` users at once (one task per user) to one app
and then the other, the order swapped every attempt. Figure: process CPU µs per order (event loop
and store thread), the median over attempts, and the ratio on ÷ off. The HTTP server and the
socket are not in it (see `make bench` for those). Writes benchmarks/results/group_commit_orders.json.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import tempfile
import time
from typing import Any

from benchmarks.scale_bench import RESULTS as SCALE_RESULTS
from benchmarks.scale_bench import System

RESULTS = SCALE_RESULTS.parent / "group_commit_orders.json"


async def run_orders(system: System, tokens: list[str], orders: int) -> tuple[float, float, float]:
    """CPU µs and wall µs per order for `orders` market orders, one task per user, and the
    transactions per commit (every store transaction: orders, and whatever else ran)."""
    counter = itertools.count()
    store = system.store
    drain, drains, queued = store._drain, 0, 0

    def counting_drain() -> None:
        nonlocal drains, queued
        drains += 1
        queued += min(len(store._queue), store.max_batch)
        drain()

    store._drain = counting_drain  # type: ignore[method-assign]

    async def trader(token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        side = itertools.cycle(("market_buy", "market_sell"))
        while next(counter) < orders:
            body = {"asset_id": "BTC", "quantity": "0.0001", "order_type": next(side)}
            answer = await system.client.post("/api/v1/orders", json=body, headers=headers)
            assert answer.status_code == 201, answer.text

    cpu, wall = time.process_time(), time.perf_counter()
    try:
        await asyncio.gather(*(trader(token) for token in tokens))
    finally:
        store._drain = drain  # type: ignore[method-assign]
    per_commit = queued / drains if drains else 1.0
    return (time.process_time() - cpu) / orders * 1e6, (time.perf_counter() - wall) / orders * 1e6, per_commit


async def main() -> dict[str, Any]:
    users = int(os.environ.get("GC_USERS", "64"))
    orders = int(os.environ.get("GC_ORDERS", "1500"))
    attempts = int(os.environ.get("GC_ATTEMPTS", "4"))
    samples: dict[str, list[float]] = {"group commit": [], "no group commit": []}
    with tempfile.TemporaryDirectory() as folder:
        systems = {"group commit": System(folder, "on"), "no group commit": System(folder, "off")}
        systems["no group commit"].store.group_commit = False
        apps = list(systems.values())
        async with (
            apps[0].app.router.lifespan_context(apps[0].app),
            apps[1].app.router.lifespan_context(apps[1].app),
            apps[0].client,
            apps[1].client,
        ):
            tokens = {name: [await s.register(f"trader{n:03d}") for n in range(users)] for name, s in systems.items()}
            for name, system in systems.items():  # warm up
                await run_orders(system, tokens[name], max(100, orders // 10))
            batches: dict[str, list[float]] = {name: [] for name in systems}
            for attempt in range(attempts):
                for name in list(systems) if attempt % 2 == 0 else list(systems)[::-1]:
                    cpu, wall, per_commit = await run_orders(systems[name], tokens[name], orders)
                    samples[name].append(round(cpu, 1))
                    batches[name].append(round(per_commit, 1))
                    print(
                        f"attempt {attempt} {name:<16} {cpu:8.0f} CPU µs per order  {wall:8.0f} wall µs per order"
                        f"  {per_commit:5.1f} transactions per commit"
                    )
    medians = {name: statistics.median(values) for name, values in samples.items()}
    report = {
        "benchmark": "group_commit_orders",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": os.getloadavg(),
        "settings": {"users": users, "orders": orders, "attempts": attempts},
        "cpu_us_per_order_median": medians,
        "ratio_on_to_off": round(medians["group commit"] / medians["no group commit"], 3),
        "transactions_per_commit": batches["group commit"],
        "attempts": samples,
    }
    print(
        f"CPU µs per market order: group commit {medians['group commit']:.0f}, without {medians['no group commit']:.0f}"
        f" (on ÷ off: {report['ratio_on_to_off']:.2f})"
    )
    return report


if __name__ == "__main__":
    result = asyncio.run(main())
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
