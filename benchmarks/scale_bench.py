"""Does a request cost more when the store holds more? A/B in one run, in process.

    make bench-scale                    # or: .venv/bin/python -m benchmarks.scale_bench
    SCALE_LEDGER=100000 SCALE_USERS=100000 SCALE_ROUNDS=300 SCALE_ATTEMPTS=3 .venv/bin/python -m benchmarks.scale_bench

Two comparisons, each between two users measured alternately (the order swapped every attempt),
through the whole ASGI app in this process (middleware, auth, rate limiter, services, SQLite store
on its thread), as `benchmarks/pages_bench.py` does, so the figure is the server's own cost:

1. **Ledger size**: on one store, a user with `SCALE_LEDGER` (100,000) ledger entries against a
   user with 100. Each round: a market buy, a market sell (0.0001 BTC), `GET /api/v1/portfolio`,
   `GET /api/v1/balance`, the ledger's first page, and the first page of the ledger filtered by
   a rare type (`system_adjustment`: 20 pairs of +/- 0.01 spread evenly through each seeded
   ledger, so 40 entries among 100 and among 100,000).
2. **Registered users**: a store with `SCALE_USERS` (100,000) users against one with 1,000; the
   user measured on each makes the same rounds.

The extra items are written through the store directly (not over HTTP): ledger entries are copies
of a real deposit's and withdrawal's entries (0.01 USD each, in pairs, so every invariant still
holds), users are copies of one registered user's items (profile, email claim, balance), so they
share one precomputed password hash instead of spending hours in Argon2id. Figures: the median
over attempts of CPU µs per request (process CPU time, loop and store thread) and the ratio
large ÷ small. Beside them, the holdings query of the long ledger's user as two SQL forms on the
same file (the partition filter the engine used before, the key range it reads now), and the
filtered page through the store as it was read before (the ledger filtered in memory until the
page is full) and as it is read now (the ledger index by type, decision 0026). `cnop
audit`'s checks run on the stores afterwards (on the 100,000 users' only with `SCALE_AUDIT_MANY=1`:
about 6 ms per user). Writes
benchmarks/results/scale.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2 as httpx
import simplejson

from cnop.audit import run_audit
from cnop.common.config import Settings
from cnop.common.database import keys
from cnop.common.database.sqlite import SQLiteStore, prefix_end
from cnop.common.database.store import Item, NotExists, Op, Put, SortKey, filtered_query
from cnop.common.entities.balance import TransactionType
from cnop.common.ids import new_id
from cnop.common.security.password_manager import TEST_ARGON2_PARAMS, PasswordManager
from cnop.container import Container, build_container
from cnop.gateway.app import create_app
from cnop.services.user.schemas import RegisterRequest

RESULTS = Path(__file__).parent / "results" / "scale.json"
PASSWORD = "Str0ng!Passw0rd"
PROTO = "scaleproto"
SECRET = "scale-bench-secret-that-is-long-enough-0123456789"
BATCH = 100  # items per seeding transaction (the store's limit)
REQUESTS = ("market buy", "market sell", "portfolio", "balance", "ledger page", "ledger filtered")


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def settings_for(path: str) -> Settings:
    return Settings(
        store=f"sqlite:///{path}",
        jwt_secret=SECRET,
        price_source="manual",
        max_price_age_seconds=86400,
        trigger_engine=False,
        rate_limit_enabled=True,  # on, as in production, with limits no round reaches
        rate_limit_per_ip="100000000/minute",
        rate_limit_per_user="100000000/minute",
        daily_deposit_limit=Decimal("1000000000"),
        daily_withdraw_limit=Decimal("1000000000"),
        log_level="WARNING",
        price_history_flush_seconds=0,
    )


class System:
    """One app on its own SQLite store, with its container, in this process."""

    def __init__(self, folder: str, name: str) -> None:
        path = f"{folder}/{name}.db"
        self.settings = settings_for(path)
        self.store = SQLiteStore(path)
        self.container: Container = build_container(
            self.settings,
            store=self.store,
            passwords=PasswordManager(self.settings, argon2_params=TEST_ARGON2_PARAMS),
        )
        self.app = create_app(self.settings, container=self.container)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=("127.0.0.1", 50000)), base_url="http://bench"
        )

    async def register(self, username: str, cash: str = "5000") -> str:
        await self.container.accounts.register(
            RegisterRequest(
                username=username,
                email=f"{username}@example.com",
                password=PASSWORD,
                first_name="Scale",
                last_name="Bench",
            )
        )
        await self.container.money.deposit(username, Decimal(cash))
        login = await self.client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
        assert login.status_code == 200, login.text
        return str(login.json()["access_token"])

    async def seed(self, items: list[Item], table: str = keys.USERS) -> None:
        for start in range(0, len(items), BATCH):
            ops: list[Op] = [Put(table, item, NotExists()) for item in items[start : start + BATCH]]
            await self.store.transact(ops)


ADJUSTMENT_PAIRS = 20  # per seeded user: the rare type of the filtered listing, spread evenly
FILTERED_TYPE = "system_adjustment"


async def seed_ledger(system: System, username: str, token: str, entries: int) -> None:
    """`entries` more ledger entries for `username`: copies of a real 0.01 deposit and withdrawal,
    among them `ADJUSTMENT_PAIRS` pairs of 0.01 adjustments (+ and -) spread evenly through the
    ledger, the rare type that the filtered listing asks for."""
    headers = {"Authorization": f"Bearer {token}"}
    for path in ("/api/v1/balance/deposit", "/api/v1/balance/withdraw"):
        answer = await system.client.post(path, json={"amount": "0.01"}, headers=headers)
        assert answer.status_code == 201, answer.text
    page = await system.store.query(keys.USERS, keys.user_pk(username), sk=SortKey.prefix(keys.TXN_PREFIX), limit=1000)
    by_type = {item["transaction_type"]: item for item in page.items if item["amount"].copy_abs() == Decimal("0.01")}
    templates = [by_type["deposit"], by_type["withdraw"]]
    adjustments = [{**t, "transaction_type": FILTERED_TYPE, "description": "Scale seed adjustment"} for t in templates]
    existing = len(page.items)
    pairs = max(0, entries - existing) // 2  # pairs keep the ledger's sum
    every = max(1, pairs // ADJUSTMENT_PAIRS)
    items = []
    for n in range(pairs):
        pair = adjustments if n % every == every // 2 and n // every < ADJUSTMENT_PAIRS else templates
        for template in pair:
            transaction_id = new_id()
            sk = keys.ledger_sk(transaction_id)
            index = keys.ledger_type_index(username, template["transaction_type"], sk)
            items.append({**template, "sk": sk, "transaction_id": transaction_id, **index})
    await system.seed(items)


async def seed_users(system: System, users: int) -> None:
    """`users` registered users in all, copies of one registered user's items (one password hash)."""
    await system.container.accounts.register(
        RegisterRequest(username=PROTO, email=f"{PROTO}@example.com", password=PASSWORD, first_name="S", last_name="P")
    )
    templates = [
        await system.store.get(keys.USERS, keys.user_key(PROTO)),
        await system.store.get(keys.USERS, keys.email_key(f"{PROTO}@example.com")),
        await system.store.get(keys.USERS, keys.balance_key(PROTO)),
    ]
    text = simplejson.dumps([t for t in templates if t is not None], use_decimal=True)
    existing = 2  # the measured user and the prototype
    batch: list[Item] = []
    for n in range(users - existing):
        batch += simplejson.loads(text.replace(PROTO, f"u{n:07d}"), use_decimal=True)
        if len(batch) >= BATCH - 3:
            await system.seed(batch)
            batch = []
    if batch:
        await system.seed(batch)


def rounds_of(system: System, token: str) -> dict[str, Callable[[], Awaitable[httpx.Response]]]:
    headers = {"Authorization": f"Bearer {token}"}
    order = {"asset_id": "BTC", "quantity": "0.0001"}
    return {
        "market buy": lambda: system.client.post(
            "/api/v1/orders", json={**order, "order_type": "market_buy"}, headers=headers
        ),
        "market sell": lambda: system.client.post(
            "/api/v1/orders", json={**order, "order_type": "market_sell"}, headers=headers
        ),
        "portfolio": lambda: system.client.get("/api/v1/portfolio", headers=headers),
        "balance": lambda: system.client.get("/api/v1/balance", headers=headers),
        "ledger page": lambda: system.client.get("/api/v1/balance/transactions?limit=20", headers=headers),
        "ledger filtered": lambda: system.client.get(
            f"/api/v1/balance/transactions?limit=20&transaction_type={FILTERED_TYPE}", headers=headers
        ),
    }


Requests = dict[str, Callable[[], Awaitable[httpx.Response]]]


async def measure_pair(small: Requests, large: Requests, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """CPU µs per request of each kind for both users, their rounds interleaved (the order
    swapped every round), so that a change in the machine's load falls on both alike."""
    cpu = [dict.fromkeys(REQUESTS, 0.0), dict.fromkeys(REQUESTS, 0.0)]
    for round_ in range(rounds):
        for side in (0, 1) if round_ % 2 == 0 else (1, 0):
            requests = (small, large)[side]
            for name in REQUESTS:
                started = time.process_time()
                answer = await requests[name]()
                cpu[side][name] += time.process_time() - started
                assert answer.status_code in (200, 201), f"{name}: {answer.status_code} {answer.text}"
    small_us, large_us = ({name: round(seconds / rounds * 1e6, 1) for name, seconds in c.items()} for c in cpu)
    return small_us, large_us


async def compare(
    label: str, small: tuple[str, Requests], large: tuple[str, Requests], rounds: int, attempts: int
) -> dict[str, Any]:
    await measure_pair(small[1], large[1], max(10, rounds // 10))  # warm up
    samples: dict[str, list[dict[str, float]]] = {small[0]: [], large[0]: []}
    for attempt in range(attempts):
        small_us, large_us = await measure_pair(small[1], large[1], rounds)
        for name, us in ((small[0], small_us), (large[0], large_us)):
            samples[name].append(us)
            print(f"{label:<8} attempt {attempt} {name:<16} " + " ".join(f"{k}={v:.0f}µs" for k, v in us.items()))
    medians = {
        name: {kind: statistics.median(s[kind] for s in runs) for kind in REQUESTS} for name, runs in samples.items()
    }
    ratios = {kind: round(medians[large[0]][kind] / medians[small[0]][kind], 3) for kind in REQUESTS}
    return {
        "small": small[0],
        "large": large[0],
        "cpu_us_median": medians,
        "ratio_large_to_small": ratios,
        "attempts": samples,
    }


def prefix_query_ab(path: str, username: str, attempts: int, rounds: int = 200) -> dict[str, Any]:
    """The holdings query of a user with a long ledger, as SQL: the partition filtered by
    `substr(sk, 1, n) = prefix` (the engine before) against the key range it reads now."""
    conn = sqlite3.connect(path)
    pk, prefix = keys.user_pk(username), keys.HOLDING_PREFIX
    forms = {
        "partition filter": (
            "SELECT body FROM users WHERE pk = ? AND substr(sk, 1, ?) = ? ORDER BY sk LIMIT 501",
            (pk, len(prefix), prefix),
        ),
        "key range": (
            "SELECT body FROM users WHERE pk = ? AND sk >= ? AND sk < ? ORDER BY sk LIMIT 501",
            (pk, prefix, prefix_end(prefix)),
        ),
    }
    timings: dict[str, list[float]] = {name: [] for name in forms}
    try:
        assert len({len(conn.execute(sql, params).fetchall()) for sql, params in forms.values()}) == 1
        for attempt in range(attempts):
            for name in list(forms) if attempt % 2 == 0 else list(forms)[::-1]:
                sql, params = forms[name]
                started = time.process_time()
                for _ in range(rounds):
                    conn.execute(sql, params).fetchall()
                timings[name].append((time.process_time() - started) / rounds * 1e6)
    finally:
        conn.close()
    medians = {name: round(statistics.median(values), 1) for name, values in timings.items()}
    return {"cpu_us_median": medians, "ratio": round(medians["partition filter"] / medians["key range"], 1)}


async def filtered_listing_ab(
    system: System, small: str, large: str, attempts: int, rounds: int = 20
) -> dict[str, Any]:
    """The ledger's first page of one rare type, for both users, as the listing read it before (the
    ledger read newest first and filtered in memory until the page is full) and as it reads now (a
    key range of the ledger index): CPU µs per page through the store, the four alternating."""
    store = system.store
    wanted = TransactionType(FILTERED_TYPE)

    def before(username: str) -> Callable[[], Awaitable[Any]]:
        return lambda: filtered_query(
            store,
            keys.USERS,
            keys.user_pk(username),
            lambda item: bool(item["transaction_type"] == FILTERED_TYPE),
            sk=SortKey.prefix(keys.TXN_PREFIX),
            limit=20,
            descending=True,
        )

    def now(username: str) -> Callable[[], Awaitable[Any]]:
        return lambda: system.container.balance_dao.get_user_transactions(username, limit=20, transaction_type=wanted)

    forms = {
        f"before, {small}": before(small),
        f"before, {large}": before(large),
        f"index, {small}": now(small),
        f"index, {large}": now(large),
    }
    pages = {name: await fetch() for name, fetch in forms.items()}

    def listed(page: Any) -> tuple[str, ...]:  # raw items before, ledger entries from the DAO now
        return tuple(i["transaction_id"] if isinstance(i, dict) else i.transaction_id for i in page.items)

    assert len({listed(page) for name, page in pages.items() if small in name}) == 1
    assert len({listed(page) for name, page in pages.items() if large in name}) == 1
    timings: dict[str, list[float]] = {name: [] for name in forms}
    for attempt in range(attempts):
        for name in list(forms) if attempt % 2 == 0 else list(forms)[::-1]:
            started = time.process_time()
            for _ in range(rounds):
                await forms[name]()
            timings[name].append((time.process_time() - started) / rounds * 1e6)
    medians = {name: round(statistics.median(values), 1) for name, values in timings.items()}
    return {
        "cpu_us_median": medians,
        "ratio_large_to_small_before": round(medians[f"before, {large}"] / medians[f"before, {small}"], 2),
        "ratio_large_to_small_index": round(medians[f"index, {large}"] / medians[f"index, {small}"], 3),
        "page_items": len(pages[f"index, {large}"].items),
    }


async def audit(system: System) -> dict[str, Any]:
    started = time.perf_counter()
    report = await run_audit(system.store)
    return {
        "ok": report.ok,
        "violations": report.violations[:10],
        "checked_users": report.checked_users,
        "seconds": round(time.perf_counter() - started, 1),
    }


async def main() -> dict[str, Any]:
    ledger_entries = env_int("SCALE_LEDGER", 100_000)
    users = env_int("SCALE_USERS", 100_000)
    few_users = env_int("SCALE_FEW_USERS", 1_000)
    rounds = env_int("SCALE_ROUNDS", 200)
    attempts = env_int("SCALE_ATTEMPTS", 3)
    report: dict[str, Any] = {
        "benchmark": "scale",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "settings": {
            "ledger": ledger_entries,
            "users": users,
            "few_users": few_users,
            "rounds": rounds,
            "attempts": attempts,
        },
    }
    with tempfile.TemporaryDirectory() as folder:
        ledger = System(folder, "ledger")
        many, few = System(folder, "many"), System(folder, "few")
        async with (
            ledger.app.router.lifespan_context(ledger.app),
            many.app.router.lifespan_context(many.app),
            few.app.router.lifespan_context(few.app),
            ledger.client,
            many.client,
            few.client,
        ):
            started = time.perf_counter()
            short_token, long_token = await ledger.register("short_ledger"), await ledger.register("long_ledger")
            await seed_ledger(ledger, "short_ledger", short_token, 100)
            await seed_ledger(ledger, "long_ledger", long_token, ledger_entries)
            report["ledger_seed_seconds"] = round(time.perf_counter() - started, 1)
            started = time.perf_counter()
            few_token, many_token = await few.register("trader"), await many.register("trader")
            await seed_users(few, few_users)
            await seed_users(many, users)
            report["users_seed_seconds"] = round(time.perf_counter() - started, 1)
            print(f"seeded in {report['ledger_seed_seconds']} s (ledger) and {report['users_seed_seconds']} s (users)")

            report["ledger"] = await compare(
                "ledger",
                ("100 entries", rounds_of(ledger, short_token)),
                (f"{ledger_entries} entries", rounds_of(ledger, long_token)),
                rounds,
                attempts,
            )
            report["users"] = await compare(
                "users",
                (f"{few_users} users", rounds_of(few, few_token)),
                (f"{users} users", rounds_of(many, many_token)),
                rounds,
                attempts,
            )
            report["prefix_query"] = prefix_query_ab(ledger.store.path, "long_ledger", attempts)
            report["filtered_listing"] = await filtered_listing_ab(ledger, "short_ledger", "long_ledger", attempts)
            audited = [("ledger", ledger), ("few", few)]
            if os.environ.get("SCALE_AUDIT_MANY") == "1":  # about 6 ms per user on this machine
                audited.append(("many", many))
            report["audit"] = {name: await audit(s) for name, s in audited}
    return report


def print_summary(report: dict[str, Any]) -> None:
    print()
    print("| comparison | request | small: CPU µs | large: CPU µs | large ÷ small |")
    print("|---|---|---:|---:|---:|")
    for label in ("ledger", "users"):
        result = report[label]
        small, large = result["cpu_us_median"][result["small"]], result["cpu_us_median"][result["large"]]
        for kind in REQUESTS:
            print(
                f"| {result['large']} vs {result['small']} | {kind} | {small[kind]:.0f} | {large[kind]:.0f}"
                f" | {result['ratio_large_to_small'][kind]:.2f} |"
            )
    prefix = report["prefix_query"]
    print(
        f"holdings query beside {report['settings']['ledger']} ledger entries, CPU µs: {prefix['cpu_us_median']}"
        f" (filter ÷ range: {prefix['ratio']})"
    )
    listing = report["filtered_listing"]
    print(
        f"filtered ledger page ({FILTERED_TYPE}, {listing['page_items']} items) through the store, CPU µs:"
        f" {listing['cpu_us_median']} (long ÷ short: before {listing['ratio_large_to_small_before']},"
        f" index {listing['ratio_large_to_small_index']})"
    )
    print(f"audit: {json.dumps(report['audit'])}")


if __name__ == "__main__":
    result = asyncio.run(main())
    print_summary(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {RESULTS}")
