"""Trigger-engine cost: one tick with 1,000 vs 1,000,000 resting orders, of which the same 10 cross.

The engine reads only the crossed orders (range queries on the trigger index), so the time per
tick should depend on the 10 that fire, not on how many rest. Run:

    .venv/bin/python -m benchmarks.tick_bench            # SQLite
    BENCH_TICK_ROUNDS=9 .venv/bin/python -m benchmarks.tick_bench
    BENCH_TICK_SIZES=1000,100000 .venv/bin/python -m benchmarks.tick_bench   # a quicker pair

Each size gets its own store; a tick is timed both on the wall clock and as this process's CPU
time (every thread: the store's included), which a loaded machine disturbs far less.

Writes benchmarks/results/tick.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from cnop.common.clock import SystemClock
from cnop.common.config import Settings
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.database import keys
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.store import Put
from cnop.common.entities.asset import Asset
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.order import OrderCreate, OrderType
from cnop.common.events import InProcessEventBus
from cnop.common.ids import new_id
from cnop.market.prices import PriceBook
from cnop.services.order.placement import Placement
from cnop.services.order.settlement import Settlement
from cnop.services.order.triggers import trigger_engine

CROSSING = 10
TICK_PRICE = Decimal("44000")
RESULTS = Path(__file__).parent / "results" / "tick.json"


async def resting_background(store: SQLiteStore, count: int) -> None:
    """`count` queued limit buys far below the tick price: they rest and never fire."""
    for start in range(0, count, 100):
        ops = []
        for n in range(start, min(count, start + 100)):
            trigger = Decimal(20000 + (n % 19000))
            ops.append(
                Put(
                    keys.ORDERS,
                    {
                        **keys.order_key(f"resting{n % 1000:04d}", f"R{n:09d}"),
                        "status": "queued",
                        "order_type": "limit_buy",
                        "asset_id": "BTC",
                        "gsi2pk": keys.trigger_pk("BTC", "below"),
                        "gsi2sk": trigger,
                    },
                )
            )
        await store.transact(ops)


async def measure(resting: int, rounds: int) -> tuple[list[float], list[float]]:
    settings = Settings(order_value_limit=Decimal(10**9))
    clock = SystemClock()
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStore(f"{folder}/tick.db")
        await store.create_tables()
        now = clock.now()
        assets = AssetDAO(store, clock)
        btc = Asset(asset_id="BTC", name="Bitcoin", symbol="btc", scale=8, created_at=now, updated_at=now)
        await assets.create_asset(btc, Decimal(10**6))
        balances = BalanceDAO(store, clock)
        events = InProcessEventBus(clock)
        orders = OrderDAO(store, clock)
        settlement = Settlement(store, balances, HoldingDAO(store, clock), assets.house)
        placement = Placement(store, orders, settlement, settings, clock, events)
        engine = trigger_engine(store, PriceBook(clock), assets.house, settings, clock, events)
        await resting_background(store, resting)
        users = [f"trader{n:02d}" for n in range(CROSSING)]
        for user in users:
            await balances.create_balance(user)
            deposit = BalanceTransaction(
                transaction_id=new_id(),
                username=user,
                transaction_type=TransactionType.DEPOSIT,
                amount=Decimal(10**8),
                available_change=Decimal(10**8),
                held_change=Decimal(0),
                description="bench",
                created_at=now,
            )
            await balances.create_transaction(deposit)
        timings: list[float] = []
        cpu: list[float] = []
        for _ in range(rounds):
            for user in users:
                request = OrderCreate(
                    order_type=OrderType.LIMIT_BUY, asset_id="BTC", quantity=Decimal("0.01"), price=Decimal("45000")
                )
                await placement.queue(user, request, Decimal("50000"))
            start, start_cpu = time.perf_counter(), time.process_time()
            filled = await engine.process_tick("BTC", TICK_PRICE)
            timings.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            assert filled == CROSSING, filled
        await store.close()
    return timings, cpu


async def main() -> None:
    rounds = int(os.environ.get("BENCH_TICK_ROUNDS", "7"))
    sizes = sorted(int(n) for n in os.environ.get("BENCH_TICK_SIZES", "1000,1000000").split(","))
    small, large = sizes[0], sizes[-1]
    results: dict[int, dict[str, float]] = {}
    for resting in sizes:
        seeded = time.perf_counter()
        timings, cpu = await measure(resting, rounds)
        results[resting] = {
            "median_ms": statistics.median(timings) * 1000,
            "min_ms": min(timings) * 1000,
            "cpu_median_ms": statistics.median(cpu) * 1000,
            "run_seconds": round(time.perf_counter() - seeded, 1),
        }
        print(
            f"{resting:>9} resting, {CROSSING} crossing: median {results[resting]['median_ms']:.2f} ms per tick, "
            f"CPU {results[resting]['cpu_median_ms']:.2f} ms",
            flush=True,
        )
    ratio = results[large]["median_ms"] / results[small]["median_ms"]
    cpu_ratio = results[large]["cpu_median_ms"] / results[small]["cpu_median_ms"]
    print(f"ratio {large} / {small} = {ratio:.2f} wall, {cpu_ratio:.2f} CPU (target < 2)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "engine": "sqlite",
                "crossing": CROSSING,
                "rounds": rounds,
                "load_average": os.getloadavg(),
                "results": results,
                "ratio": ratio,
                "cpu_ratio": cpu_ratio,
            },
            indent=2,
        )
    )
    if ratio >= 2 and cpu_ratio >= 2:
        raise SystemExit("tick cost grew with resting orders")


if __name__ == "__main__":
    asyncio.run(main())
