"""Fault injection at the store port: a failure at any call of a use case leaves all or nothing.

For each use case, a clean run first records what it changes (as key shapes: user names, ids and
dates replaced by placeholders) and how many store calls it makes. Then, for every call number
*i*, a fresh user repeats the use case with call *i* failing, once as a store error before the
call (nothing applied) and, for transactions, once as a timeout after the call was applied (the
answer lost). After each faulted attempt:

- the client got the normal answer or a 503 `store_unavailable` problem, never a 500;
- the store holds either the whole change set of the clean run or nothing of it;
- the user's books still balance (the audit's per-user checks);
- the same request, retried (with the same `Idempotency-Key` where the route takes one),
  succeeds or answers the first attempt's result, and afterwards the change set is exactly the
  clean run's: applied once, never twice.

Runs on both engines, through the ASGI app (the faults are in-process; nothing needs a socket).
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from cnop.audit import USER_CHECKS, AuditReport, run_audit
from cnop.common.clock import FakeClock
from cnop.common.database import keys
from cnop.market.prices import Tick
from tests.conftest import StoreFactory
from tests.support.api import PASSWORD, Api, open_api
from tests.support.faulty_store import Change, Fault, FaultyStore
from tests.support.wire import read

ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")
# Which of an asset's house shards a trade writes is the next in turn (decision 0025): runs differ.
HOUSE_SHARD = re.compile(r"^HOUSE#([^#]+)#\d+$")


@dataclass
class Ctx:
    """One run of a use case: a fresh user and whatever the use case set up for it."""

    username: str
    headers: dict[str, str] = field(default_factory=dict)
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    order_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    status: int
    body: Any


Step = Callable[[Api, Ctx], Awaitable[Outcome]]
Prepare = Callable[[Api, Ctx], Awaitable[None]]


@dataclass(frozen=True)
class UseCase:
    name: str
    prepare: Prepare
    act: Step
    ok: int
    # Statuses a retry may answer once the first attempt was applied (e.g. 409 username_taken).
    applied_retry: frozenset[int] = frozenset()
    idempotent: bool = False


async def http(api: Api, method: str, path: str, ctx: Ctx, body: Any = None, *, key: bool = False) -> Outcome:
    headers = dict(ctx.headers)
    if key:
        headers["Idempotency-Key"] = ctx.key
    r = await api.client.request(method, path, json=body, headers=headers)
    content_type = r.headers.get("content-type", "")
    if r.status_code >= 400:
        assert content_type.startswith("application/problem+json"), (r.status_code, r.text)
    return Outcome(r.status_code, read(r) if r.content else None)


# --- set-ups (run with the store unarmed) --------------------------------------------------------


async def registered(api: Api, ctx: Ctx) -> None:
    _, ctx.headers = await api.register(ctx.username)


async def funded(api: Api, ctx: Ctx) -> None:
    await registered(api, ctx)
    await api.deposit(ctx.headers, "5000.00")
    api.set_price("BTC", "50000")


async def holding_btc(api: Api, ctx: Ctx) -> None:
    await funded(api, ctx)
    r = await api.order(ctx.headers, order_type="market_buy", asset_id="BTC", quantity="0.02")
    assert r.status_code == 201, r.text


async def resting_buy(api: Api, ctx: Ctx) -> None:
    await funded(api, ctx)
    r = await api.order(ctx.headers, order_type="limit_buy", asset_id="BTC", quantity="0.01", price="40000")
    assert r.status_code == 201 and read(r)["data"]["status"] == "queued", r.text
    ctx.order_id = read(r)["data"]["order_id"]


# --- the use cases -----------------------------------------------------------------------------


async def do_register(api: Api, ctx: Ctx) -> Outcome:
    body = {
        "username": ctx.username,
        "email": f"{ctx.username}@example.com",
        "password": PASSWORD,
        "first_name": "Ada",
        "last_name": "Lovelace",
    }
    return await http(api, "POST", "/api/v1/auth/register", ctx, body)


async def do_deposit(api: Api, ctx: Ctx) -> Outcome:
    return await http(api, "POST", "/api/v1/balance/deposit", ctx, {"amount": "125.50"}, key=True)


async def do_deposit_without_key(api: Api, ctx: Ctx) -> Outcome:
    return await http(api, "POST", "/api/v1/balance/deposit", ctx, {"amount": "125.50"})


async def do_withdraw(api: Api, ctx: Ctx) -> Outcome:
    return await http(api, "POST", "/api/v1/balance/withdraw", ctx, {"amount": "300.00"}, key=True)


async def do_market_buy(api: Api, ctx: Ctx) -> Outcome:
    body = {"order_type": "market_buy", "asset_id": "BTC", "quantity": "0.01"}
    return await http(api, "POST", "/api/v1/orders", ctx, body, key=True)


async def do_market_sell(api: Api, ctx: Ctx) -> Outcome:
    body = {"order_type": "market_sell", "asset_id": "BTC", "quantity": "0.005"}
    return await http(api, "POST", "/api/v1/orders", ctx, body, key=True)


async def do_limit_buy(api: Api, ctx: Ctx) -> Outcome:
    body = {"order_type": "limit_buy", "asset_id": "BTC", "quantity": "0.01", "price": "40000"}
    return await http(api, "POST", "/api/v1/orders", ctx, body, key=True)


async def do_limit_sell(api: Api, ctx: Ctx) -> Outcome:
    body = {"order_type": "limit_sell", "asset_id": "BTC", "quantity": "0.01", "price": "60000"}
    return await http(api, "POST", "/api/v1/orders", ctx, body, key=True)


async def do_cancel(api: Api, ctx: Ctx) -> Outcome:
    return await http(api, "DELETE", f"/api/v1/orders/{ctx.order_id}", ctx)


async def do_trigger_fill(api: Api, ctx: Ctx) -> Outcome:
    # The trigger engine swallows (and logs) a failed tick and fills on the next one.
    filled = await api.container.triggers.process([Tick("BTC", Decimal("39000"), api.container.clock.now())])
    if filled == 0:  # the engine logged a failed tick: what a client would see as an outage
        return Outcome(503, {"code": "store_unavailable"})
    return Outcome(200, filled)


async def prepare_trigger(api: Api, ctx: Ctx) -> None:
    await resting_buy(api, ctx)


async def do_logout(api: Api, ctx: Ctx) -> Outcome:
    return await http(api, "POST", "/api/v1/auth/logout", ctx)


async def do_password_change(api: Api, ctx: Ctx) -> Outcome:
    body = {"current_password": PASSWORD, "new_password": "N3w!Passw0rd-long"}
    return await http(api, "POST", "/api/v1/auth/password", ctx, body)


async def do_profile_update(api: Api, ctx: Ctx) -> Outcome:
    body = {"first_name": "Grace", "email": f"{ctx.username}.new@example.com"}
    return await http(api, "PUT", "/api/v1/auth/profile", ctx, body)


USE_CASES = [
    UseCase("register", lambda api, ctx: _nothing(), do_register, 201, frozenset({409})),
    UseCase("deposit", registered, do_deposit, 201, idempotent=True),
    UseCase("deposit_without_key", registered, do_deposit_without_key, 201),
    UseCase("withdraw", funded, do_withdraw, 201, idempotent=True),
    UseCase("market_buy", funded, do_market_buy, 201, idempotent=True),
    UseCase("market_sell", holding_btc, do_market_sell, 201, idempotent=True),
    UseCase("place_limit_buy", funded, do_limit_buy, 201, idempotent=True),
    UseCase("place_limit_sell", holding_btc, do_limit_sell, 201, idempotent=True),
    UseCase("cancel", resting_buy, do_cancel, 200, frozenset({409})),
    UseCase("trigger_fill", prepare_trigger, do_trigger_fill, 200),
    UseCase("logout", registered, do_logout, 200, frozenset({401})),
    UseCase("password_change", registered, do_password_change, 200, frozenset({401})),
    UseCase("profile_update", registered, do_profile_update, 200),
]


async def _nothing() -> None:
    return None


# --- comparing outcomes --------------------------------------------------------------------------


def shapes(changes: dict[tuple[str, str, str], Change], ctx: Ctx) -> Counter[tuple[str, ...]]:
    """What changed, with this run's names and ids replaced, so two runs can be compared."""

    def norm(text: str) -> str:
        text = HOUSE_SHARD.sub(r"HOUSE#\1#<shard>", text.replace(ctx.username, "<user>").replace(ctx.key, "<key>"))
        return HEX_ID.sub("<id>", DATE.sub("<date>", ULID.sub("<id>", text)))

    counted: Counter[tuple[str, ...]] = Counter()
    for (table, pk, sk), change in changes.items():
        if pk == keys.PRICE_HISTORY_PK:
            continue  # price history the feed records (set_price after the clock moved), not the use case
        kind = "created" if change.before is None else "deleted" if change.after is None else "updated"
        status = str((change.after or {}).get("status", ""))
        counted[(table, norm(pk), norm(sk), kind, status)] += 1
    return counted


async def user_books_balance(api: Api, username: str) -> list[str]:
    """The audit's per-user checks (books of a user who does not exist balance trivially)."""
    if await api.container.user_dao.find_user(username) is None:
        return []
    report = AuditReport()
    for check in USER_CHECKS:
        await check(api.container.store, username, report)
    return report.violations


@pytest.fixture
async def faulty_api(store_factory: StoreFactory) -> AsyncIterator[tuple[Api, FaultyStore, FakeClock]]:
    holder: list[FaultyStore] = []

    def wrapped() -> Any:
        faulty = FaultyStore(store_factory())
        holder.append(faulty)
        return faulty

    clock = FakeClock(datetime.now(UTC))
    api, lifespan = await open_api(wrapped, clock=clock)
    yield api, holder[0], clock
    await api.client.aclose()
    await lifespan.__aexit__(None, None, None)


_names = iter(range(10**9))


def fresh_ctx(case: UseCase) -> Ctx:
    return Ctx(username=f"f{case.name[:12]}_{next(_names):05d}")


def split(changed: Counter[tuple[str, ...]]) -> tuple[Counter[tuple[str, ...]], set[str]]:
    """The business change set, and the states of the idempotency record (if any)."""
    business = Counter({shape: n for shape, n in changed.items() if not shape[2].startswith(keys.IDEMPOTENCY_PREFIX)})
    records = {shape[4] for shape in changed if shape[2].startswith(keys.IDEMPOTENCY_PREFIX)}
    return business, records


def is_in_progress(outcome: Outcome) -> bool:
    return (
        outcome.status == 409
        and isinstance(outcome.body, dict)
        and outcome.body.get("code") == "idempotency_in_progress"
    )


@pytest.mark.parametrize("case", USE_CASES, ids=[c.name for c in USE_CASES])
async def test_a_store_failure_at_any_call_leaves_all_or_nothing(
    faulty_api: tuple[Api, FaultyStore, FakeClock], case: UseCase
) -> None:
    api, store, clock = faulty_api
    # A first run warms the caches (assets, verified tokens), so the recorded run is the steady path.
    warm = fresh_ctx(case)
    await case.prepare(api, warm)
    assert (await case.act(api, warm)).status == case.ok
    ctx = fresh_ctx(case)
    await case.prepare(api, ctx)
    store.arm()
    clean = await case.act(api, ctx)
    store.disarm()
    assert clean.status == case.ok, clean
    expected, clean_records = split(shapes(await store.changes(), ctx))
    assert expected, f"{case.name} changed nothing in a clean run"
    assert clean_records == ({"completed"} if case.idempotent else set())
    calls = list(store.calls)
    plan = [(i, Fault.ERROR) for i in range(len(calls))]
    plan += [(i, Fault.TIMEOUT) for i, name in enumerate(calls) if name == "transact"]
    # Numbered per method, so a read that a cache sometimes saves does not shift which call fails.
    nth = [calls[:i].count(name) for i, name in enumerate(calls)]

    problems: list[str] = []
    in_progress_after_apply: list[str] = []
    for index, fault in plan:
        ctx = fresh_ctx(case)
        await case.prepare(api, ctx)
        store.arm(nth[index], fault, only=calls[index])
        first = await case.act(api, ctx)
        store.disarm()
        where = f"{case.name}: {fault.value} at call {index} ({calls[index]})"
        if store.injected is None:
            problems.append(f"{where}: the use case made other calls than its clean run ({store.calls})")
            continue
        if (first.status >= 500 and (first.status != 503 or first.body.get("code") != "store_unavailable")) or (
            first.status < 500 and first.status != case.ok
        ):
            problems.append(f"{where}: answered {first.status} {first.body}")
        business, _ = split(shapes(await store.changes(), ctx))
        applied = business == expected
        if business and not applied:
            problems.append(f"{where}: half applied: {dict(business)} instead of {dict(expected)}")
        if first.status == case.ok and not applied:
            problems.append(f"{where}: answered {first.status} but did not apply")
        problems += [f"{where}: {v}" for v in await user_books_balance(api, ctx.username)]
        if applied and not case.idempotent and not case.applied_retry:
            continue  # applied, and without a key a retry is a second request by design

        retry = await case.act(api, ctx)
        if case.idempotent and is_in_progress(retry) and not applied:
            # The claim was stored but its answer lost: it blocks the key until its lease ends,
            # then a retry takes it over.
            clock.advance(api.container.settings.idempotency_lease_seconds + 1)
            api.set_price("BTC", "50000")
            retry = await case.act(api, ctx)
        if case.idempotent and applied and is_in_progress(retry):
            # docs/api.md (Idempotency): a replay of an applied request returns its first result; one whose work was
            # applied but whose answer was never saved still answers 409 (issue 12, finding 7).
            in_progress_after_apply.append(where)
        elif retry.status not in ({case.ok} | (case.applied_retry if applied else set())):
            problems.append(f"{where}: retry answered {retry.status} {retry.body}")
        elif case.idempotent and first.status == case.ok and retry.body != first.body:
            problems.append(f"{where}: replay answered {retry.body}, first answer was {first.body}")
        final, records = split(shapes(await store.changes(), ctx))
        if final != expected:
            problems.append(f"{where}: after the retry {dict(final)} instead of exactly {dict(expected)}")
        if case.idempotent and where not in in_progress_after_apply and records != {"completed"}:
            problems.append(f"{where}: idempotency record left {records} after the retry")
        problems += [f"{where} (after retry): {v}" for v in await user_books_balance(api, ctx.username)]

    report = await run_audit(api.container.store)
    problems += [f"audit: {v}" for v in report.violations]
    assert not problems, "\n".join(problems)
    if in_progress_after_apply:
        pytest.xfail(
            "applied but unsaved idempotent requests still replay as 409 idempotency_in_progress"
            f" (issue 12 finding 7), at: {'; '.join(in_progress_after_apply)}"
        )
