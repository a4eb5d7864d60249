"""Idempotency after a crash: the work committed, the process died before saving the response.

The store then holds the work and a key marked `applied` (in the work's own transaction), but no
response. A replay must answer with the original result, rebuilt from what the work created,
and change nothing; before the fix it answered 409 `idempotency_in_progress` for 24 h.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from cnop.common.idempotency import IdempotencyRecord
from tests.support.api import Api, every, ledger, orders
from tests.support.wire import exact, read, usd

D = Decimal


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@contextmanager
def dying_before_the_response_is_saved(api: Api) -> Iterator[None]:
    """Make saving the first response fail the way a killed process would (after the commit)."""
    records = api.container.idempotency
    real_finish = records.finish

    async def die(*args: Any, **kwargs: Any) -> None:
        raise ConnectionResetError("the process died before the response was saved")

    records.finish = die  # type: ignore[method-assign]
    try:
        yield
    finally:
        records.finish = real_finish  # type: ignore[method-assign]


async def idempotency_records(api: Api, username: str) -> list[IdempotencyRecord]:
    return await every(lambda at: api.container.idempotency.get_records(username, limit=100, cursor=at))


@pytest.mark.parametrize(("path", "funded", "change"), [("deposit", "0", D("40.25")), ("withdraw", "100", D("-40.25"))])
async def test_a_money_movement_applied_before_a_crash_replays_its_original_result(
    api: Api, path: str, funded: str, change: Decimal
) -> None:
    username, headers = await api.register()
    if funded != "0":
        await api.deposit(headers, funded)
    keyed = {**headers, "Idempotency-Key": f"{path}-crash-1"}
    with dying_before_the_response_is_saved(api):
        crashed = await api.client.post(f"/api/v1/balance/{path}", json={"amount": "40.25"}, headers=keyed)
    assert crashed.status_code == 500  # the client saw the connection die; the work had committed
    entries = await ledger(api, username)
    moved = [e for e in entries if e.transaction_type == path]
    assert len(moved) == 1
    (record,) = await idempotency_records(api, username)
    assert record.status == "applied" and record.result_id == moved[0].transaction_id

    replay = await api.client.post(f"/api/v1/balance/{path}", json={"amount": "40.25"}, headers=keyed)
    assert replay.status_code == 201, replay.text
    body = read(replay)
    assert body["success"] is True
    assert body["transaction_id"] == moved[0].transaction_id
    assert usd(body["amount"]) == D("40.25")
    assert usd(body["balance"]) == D(funded) + change
    assert parse_time(body["timestamp"]) == moved[0].created_at
    # Nothing applied twice, and the rebuilt answer is now the stored one.
    assert len(await ledger(api, username)) == len(entries)
    again = await api.client.post(f"/api/v1/balance/{path}", json={"amount": "40.25"}, headers=keyed)
    assert again.status_code == 201 and again.content == replay.content
    (record,) = await idempotency_records(api, username)
    assert record.status == "completed"
    balance = await api.container.balance_dao.find_balance(username)
    assert balance is not None and balance.available == D(funded) + change


async def test_a_market_order_applied_before_a_crash_replays_the_order_it_created(api: Api) -> None:
    username, headers = await api.register()
    await api.deposit(headers, "10000")
    api.set_price("BTC", "50000")
    keyed = {**headers, "Idempotency-Key": "order-crash-1"}
    body = {"order_type": "market_buy", "asset_id": "BTC", "quantity": "0.01"}
    with dying_before_the_response_is_saved(api):
        crashed = await api.client.post("/api/v1/orders", json=body, headers=keyed)
    assert crashed.status_code == 500
    (order,) = await orders(api, username)
    balance_after = await api.container.balance_dao.find_balance(username)
    assert balance_after is not None and balance_after.available == D("9500.00")

    api.set_price("BTC", "60000")  # the replay must not re-price or re-trade
    replay = await api.client.post("/api/v1/orders", json=body, headers=keyed)
    assert replay.status_code == 201, replay.text
    data = read(replay)["data"]
    assert data["order_id"] == order.order_id and data["status"] == "completed"
    assert exact(data["executed_price"]) == D("50000") and usd(data["total_amount"]) == D("500.00")
    assert exact(data["quantity"]) == D("0.01")
    assert len(await orders(api, username)) == 1
    balance = await api.container.balance_dao.find_balance(username)
    assert balance is not None and balance.available == D("9500.00")
    holding = await api.container.holding_dao.get_holding(username, "BTC")
    assert holding is not None and holding.available == D("0.01")


async def test_a_resting_order_applied_before_a_crash_replays_the_order_it_created(api: Api) -> None:
    username, headers = await api.register()
    await api.deposit(headers, "1000")
    api.set_price("BTC", "50000")
    keyed = {**headers, "Idempotency-Key": "limit-crash-1"}
    body = {"order_type": "limit_buy", "asset_id": "BTC", "quantity": "0.01", "price": "40000"}
    with dying_before_the_response_is_saved(api):
        crashed = await api.client.post("/api/v1/orders", json=body, headers=keyed)
    assert crashed.status_code == 500
    (order,) = await orders(api, username)
    replay = await api.client.post("/api/v1/orders", json=body, headers=keyed)
    assert replay.status_code == 201, replay.text
    data = read(replay)["data"]
    assert data["order_id"] == order.order_id and data["status"] == "queued"
    assert len(await orders(api, username)) == 1
    balance = await api.container.balance_dao.find_balance(username)
    assert balance is not None and balance.available == D("600.00") and balance.held == D("400.00")


async def test_a_replay_with_another_body_after_a_crash_is_still_refused(api: Api) -> None:
    username, headers = await api.register()
    keyed = {**headers, "Idempotency-Key": "dep-crash-2"}
    with dying_before_the_response_is_saved(api):
        await api.client.post("/api/v1/balance/deposit", json={"amount": "10"}, headers=keyed)
    other = await api.client.post("/api/v1/balance/deposit", json={"amount": "11"}, headers=keyed)
    assert other.status_code == 422 and read(other)["code"] == "idempotency_key_reused"
    (entry,) = await ledger(api, username)
    assert entry.amount == D("10")
