"""What a sell costs against a buy, and what many sells of one holding at once cost (decision 0024).

    .venv/bin/python -m benchmarks.sell_bench
    SELL_ROUNDS=300 SELL_ATTEMPTS=5 SELL_CONTENDERS=64 SELL_ENGINES=sqlite,dynamodb \
        .venv/bin/python -m benchmarks.sell_bench

1. **CPU per sell vs per buy** (SQLite, A/B in one run): two apps in this process (as
   `benchmarks/scale_bench.py` builds them), one whose sells read the holding and then write
   under a version guard (the read path: what every sell did before decision 0024, and what
   DynamoDB still does) and one whose sells are planned inside their transaction. Each attempt
   sends `SELL_ROUNDS` rounds of a market buy then a market sell (0.0001 BTC, one user, one at a
   time) to one app and then the other, the order swapped every attempt; the process CPU of each
   request (event loop and store thread) is summed by kind. Figures: the median over attempts of
   CPU µs per buy and per sell, sell ÷ buy for each app, planned ÷ read for sells.
2. **Contention** (each engine of `SELL_ENGINES`; DynamoDB on DynamoDB Local, started as the
   store benchmark does): `SELL_CONTENDERS` market sells of 1 unit at once against a holding of
   40 units, through `Settlement` in process. Figures: transactions and reads per sell, wall
   time, whether every sell's realised P&L is a step of the serial reference (exact) and the
   cost basis left on the emptied holding. Run with an older `cnop` first on `PYTHONPATH` to
   measure the code before (the script uses only what both have).

Writes benchmarks/results/sells.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections import Counter
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from benchmarks.scale_bench import RESULTS as SCALE_RESULTS
from benchmarks.scale_bench import System
from cnop.common.clock import FakeClock
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.database.store import ItemStore
from cnop.common.database.transaction import Legs
from cnop.common.entities.asset import Asset
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.order import Order, OrderStatus, OrderType
from cnop.common.ids import new_id
from cnop.services.order.settlement import Settlement, UnitsMissing

RESULTS = SCALE_RESULTS.parent / "sells.json"
D = Decimal


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


# --- 1. CPU per sell vs per buy -------------------------------------------------------------------


def read_path(system: System) -> None:
    """Make the app's one `Settlement` read and retry, as on an engine without planning."""
    settlement = system.container.trading.settlement
    if hasattr(settlement, "planner"):
        settlement.planner = None


async def rounds(system: System, token: str, count: int) -> tuple[float, float]:
    """CPU µs per market buy and per market sell over `count` rounds of one buy then one sell."""
    headers = {"Authorization": f"Bearer {token}"}
    spent = {"market_buy": 0.0, "market_sell": 0.0}
    for _ in range(count):
        for kind in spent:
            body = {"asset_id": "BTC", "quantity": "0.0001", "order_type": kind}
            cpu = time.process_time()
            answer = await system.client.post("/api/v1/orders", json=body, headers=headers)
            spent[kind] += time.process_time() - cpu
            assert answer.status_code == 201, answer.text
    return spent["market_buy"] / count * 1e6, spent["market_sell"] / count * 1e6


async def cpu_per_sell(folder: str, count: int, attempts: int) -> dict[str, Any]:
    read, planned = System(folder, "read"), System(folder, "planned")
    systems = {"read": read, "planned": planned}
    read_path(read)
    figures: dict[str, dict[str, list[float]]] = {name: {"buy": [], "sell": []} for name in systems}
    async with (
        read.app.router.lifespan_context(read.app),
        planned.app.router.lifespan_context(planned.app),
        read.client,
        planned.client,
    ):
        tokens = {name: await system.register(f"seller{name}", cash="100000") for name, system in systems.items()}
        for name, system in systems.items():
            await rounds(system, tokens[name], 20)  # warm up
        for attempt in range(attempts):
            order = list(systems) if attempt % 2 == 0 else list(reversed(systems))
            for name in order:
                buy, sell = await rounds(systems[name], tokens[name], count)
                figures[name]["buy"].append(buy)
                figures[name]["sell"].append(sell)
    report: dict[str, Any] = {"rounds": count, "attempts": attempts}
    for name, per in figures.items():
        buy, sell = statistics.median(per["buy"]), statistics.median(per["sell"])
        report[name] = {
            "buy_cpu_us": round(buy, 1),
            "sell_cpu_us": round(sell, 1),
            "sell_over_buy": round(sell / buy, 3),
        }
    report["planned_sell_over_read_sell"] = round(report["planned"]["sell_cpu_us"] / report["read"]["sell_cpu_us"], 3)
    return report


# --- 2. contention ----------------------------------------------------------------------------


async def seeded(store: ItemStore) -> tuple[Settlement, OrderDAO, str, FakeClock]:
    clock = FakeClock()
    balances, holdings, assets = BalanceDAO(store, clock), HoldingDAO(store, clock), AssetDAO(store, clock)
    now = clock.now()
    await assets.create_asset(
        Asset(asset_id="BTC", name="Bitcoin", symbol="BTC", created_at=now, updated_at=now), D(10**6)
    )
    username = f"u{uuid.uuid4().hex[:10]}"
    await balances.create_balance(username)
    deposit = BalanceTransaction(
        transaction_id=new_id(),
        username=username,
        transaction_type=TransactionType.DEPOSIT,
        amount=D("100000.00"),
        available_change=D("100000.00"),
        held_change=D("0.00"),
        description="Deposit",
        created_at=now,
    )
    await balances.create_transaction(deposit)
    return Settlement(store, balances, holdings, assets.house), OrderDAO(store, clock), username, clock


def order_of(username: str, clock: FakeClock, kind: OrderType, quantity: Decimal, total: Decimal, **more: Any) -> Order:
    now = clock.now()
    return Order(
        order_id=new_id(),
        username=username,
        order_type=kind,
        asset_id="BTC",
        quantity=quantity,
        status=OrderStatus.COMPLETED,
        executed_price=D(1),
        total_amount=total,
        executed_at=now,
        created_at=now,
        updated_at=now,
        **more,
    )


async def contention(store: ItemStore, contenders: int, *, planned: bool) -> dict[str, Any]:
    await store.create_tables()
    settlement, orders, username, clock = await seeded(store)
    if not planned and hasattr(settlement, "planner"):
        settlement.planner = None
    units, cost, proceeds = D(40), D("1000.01"), D("30.00")
    buy = order_of(username, clock, OrderType.MARKET_BUY, units, cost)
    legs = Legs()
    await orders.create_order(buy, tx=legs)
    await settlement.settle_buy(buy, legs)
    counts = Counter[str]()
    real_transact, real_get = store.transact, store.get
    real_planned = getattr(store, "transact_planned", None)

    async def transact(ops: Any, *, token: str | None = None) -> None:
        counts["transactions"] += 1
        await real_transact(ops, token=token)

    async def get(table: str, key: Any, *, consistent: bool = True) -> Any:
        counts["reads"] += 1
        return await real_get(table, key, consistent=consistent)

    async def planned_transact(table: str, key: Any, plan: Any) -> None:
        counts["transactions"] += 1
        assert real_planned is not None
        await real_planned(table, key, plan)

    async def filled(basis_out: Decimal, legs: Legs) -> Order:
        order = order_of(username, clock, OrderType.MARKET_SELL, D(1), proceeds, realized_pnl=proceeds - basis_out)
        return await orders.create_order(order, tx=legs)

    async def sell() -> Order | None:
        try:
            return await settlement.settle_sell(username, "BTC", D(1), filled, from_held=False)
        except UnitsMissing:
            return None

    store.transact, store.get = transact, get  # type: ignore[method-assign]
    if real_planned is not None:
        store.transact_planned = planned_transact  # type: ignore[attr-defined]
    wall = time.perf_counter()
    results = await asyncio.gather(*(sell() for _ in range(contenders)), return_exceptions=True)
    wall = time.perf_counter() - wall
    store.transact, store.get = real_transact, real_get  # type: ignore[method-assign]
    if real_planned is not None:
        store.transact_planned = real_planned  # type: ignore[attr-defined]
    sold = [r for r in results if isinstance(r, Order)]
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    reference, left, held = [], cost, units
    for _ in sold:
        out = left if held <= 1 else (left / held).quantize(D("0.01"), ROUND_HALF_EVEN)
        reference.append(proceeds - out)
        left, held = left - out, held - 1
    holding = await settlement.holdings.get_holding(username, "BTC")
    await store.close()
    return {
        "contenders": contenders,
        "sold": len(sold),
        "errors": errors[:3],
        "transactions_per_sell": round(counts["transactions"] / contenders, 2),
        "reads_per_sell": round(counts["reads"] / contenders, 2),
        "wall_ms": round(wall * 1000),
        "exact": Counter(o.realized_pnl for o in sold) == Counter(reference),
        "cost_basis_left": str(holding.cost_basis) if holding is not None else None,
        "units_left": str(holding.available + holding.held) if holding is not None else None,
    }


async def main() -> dict[str, Any]:
    count, attempts = env_int("SELL_ROUNDS", 200), env_int("SELL_ATTEMPTS", 5)
    contenders = env_int("SELL_CONTENDERS", 64)
    engines = [e for e in os.environ.get("SELL_ENGINES", "sqlite,dynamodb").split(",") if e]
    report: dict[str, Any] = {"machine": platform.platform(), "load": os.getloadavg()}
    with tempfile.TemporaryDirectory() as folder:
        if env_int("SELL_CPU", 1):
            report["cpu"] = await cpu_per_sell(folder, count, attempts)
        report["contention"] = {}
        if "sqlite" in engines:
            from cnop.common.database.sqlite import SQLiteStore

            for planned in (False, True):
                name = "sqlite " + ("planned" if planned else "read")
                store = SQLiteStore(f"{folder}/contention-{planned}.db")
                report["contention"][name] = await contention(store, contenders, planned=planned)
        if "dynamodb" in engines:
            from benchmarks.store_bench import dynamodb_endpoint
            from cnop.common.database.dynamodb import DynamoDBStore

            with dynamodb_endpoint(None) as endpoint:
                store = DynamoDBStore.for_local(endpoint, table_prefix=f"s{uuid.uuid4().hex[:8]}")
                report["contention"]["dynamodb"] = await contention(store, contenders, planned=False)
    report["load_after"] = os.getloadavg()
    return report


if __name__ == "__main__":
    result = asyncio.run(main())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
