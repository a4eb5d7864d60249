"""Balance, deposit, withdraw and ledger endpoints (docs/api.md: Balance and ledger)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from cnop.audit import run_audit
from tests.support.api import Api, assert_problem
from tests.support.wire import read, usd


async def balance(api: Api, headers: dict[str, str]) -> dict[str, Any]:
    r = await api.client.get("/api/v1/balance", headers=headers)
    assert r.status_code == 200
    return dict(read(r))


async def ledger(api: Api, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    r = await api.client.get("/api/v1/balance/transactions", headers=headers, params=params)
    assert r.status_code == 200, r.text
    return dict(read(r))


async def test_new_user_has_zero_balance_and_empty_ledger(api: Api) -> None:
    _, headers = await api.register()
    b = await balance(api, headers)
    assert b["current_balance"] == "0.00" and b["available_balance"] == "0.00" and b["held_balance"] == "0.00"
    assert b["total_deposited"] == "0.00" and b["total_withdrawn"] == "0.00" and b["currency"] == "USD"
    assert "updated_at" in b
    page = await ledger(api, headers)
    assert page["transactions"] == [] and page["has_more"] is False and page["next_cursor"] is None


async def test_deposit_then_withdraw_updates_balance_and_ledger_exactly(api: Api) -> None:
    _, headers = await api.register()
    r = await api.client.post("/api/v1/balance/deposit", json={"amount": 1000.1}, headers=headers)
    assert r.status_code == 201, r.text
    body = read(r)
    assert body["success"] is True and body["amount"] == "1000.10" and body["balance"] == "1000.10"
    assert '"amount":"1000.10"' in r.text  # exact, two places, a JSON string
    deposit_id = body["transaction_id"]
    r = await api.client.post("/api/v1/balance/withdraw", json={"amount": "0.10"}, headers=headers)
    assert r.status_code == 201
    assert read(r)["amount"] == "0.10" and read(r)["balance"] == "1000.00"
    b = await balance(api, headers)
    assert b["current_balance"] == "1000.00" and b["available_balance"] == "1000.00" and b["held_balance"] == "0.00"
    assert b["total_deposited"] == "1000.10" and b["total_withdrawn"] == "0.10"
    page = await ledger(api, headers)
    entries = page["transactions"]
    assert [e["transaction_type"] for e in entries] == ["withdraw", "deposit"]  # newest first
    assert entries[1]["transaction_id"] == deposit_id
    assert entries[0]["amount"] == "0.10" and entries[0]["available_change"] == "-0.10"
    assert entries[0]["held_change"] == "0.00"
    assert entries[1]["amount"] == "1000.10" and entries[1]["available_change"] == "1000.10"
    assert entries[1]["status"] == "completed"
    assert sum(usd(e["available_change"]) for e in entries) == Decimal("1000.00")


@pytest.mark.parametrize(
    "amount",
    [0, -5, "0", "-0.01", 1000000.01, "1e7", 10.001, "10.001", "abc", None, True, "", "NaN", [], {}],
)
async def test_bad_amounts_are_422_and_change_nothing(api: Api, amount: Any) -> None:
    username, headers = await api.register()
    await api.deposit(headers, "50")
    for path in ("/api/v1/balance/deposit", "/api/v1/balance/withdraw"):
        r = await api.client.post(path, json={"amount": amount}, headers=headers)
        body = assert_problem(r, 422, "validation_error")
        assert body["errors"] and body["errors"][0]["field"].endswith("amount")
    assert (await balance(api, headers))["current_balance"] == "50.00"
    assert len((await ledger(api, headers))["transactions"]) == 1


async def test_missing_amount_and_non_json_body_are_422(api: Api) -> None:
    _, headers = await api.register()
    assert_problem(await api.client.post("/api/v1/balance/deposit", json={}, headers=headers), 422, "validation_error")
    r = await api.client.post("/api/v1/balance/deposit", content=b"{not json", headers={**headers, "Content-Type": "application/json"})
    assert_problem(r, 422, "validation_error")


async def test_withdraw_more_than_available_is_insufficient_funds(api: Api) -> None:
    _, headers = await api.register()
    await api.deposit(headers, "100")
    r = await api.client.post("/api/v1/balance/withdraw", json={"amount": "100.01"}, headers=headers)
    assert_problem(r, 422, "insufficient_funds")
    assert (await balance(api, headers))["current_balance"] == "100.00"
    assert len((await ledger(api, headers))["transactions"]) == 1


async def test_daily_deposit_and_withdraw_limits(api: Api) -> None:
    username, headers = await api.register()
    await api.deposit(headers, "6000")
    await api.deposit(headers, "4000")
    r = await api.client.post("/api/v1/balance/deposit", json={"amount": "0.01"}, headers=headers)
    assert_problem(r, 422, "daily_limit_exceeded")
    r = await api.client.post("/api/v1/balance/deposit", json={"amount": "10000.01"}, headers=headers)
    assert_problem(r, 422, "daily_limit_exceeded")
    assert (await balance(api, headers))["current_balance"] == "10000.00"
    for _ in range(5):
        assert (await api.client.post("/api/v1/balance/withdraw", json={"amount": 1000}, headers=headers)).status_code == 201
    r = await api.client.post("/api/v1/balance/withdraw", json={"amount": "0.01"}, headers=headers)
    assert_problem(r, 422, "daily_limit_exceeded")
    b = await balance(api, headers)
    assert b["current_balance"] == "5000.00" and b["total_withdrawn"] == "5000.00"
    assert len((await ledger(api, headers, limit=100))["transactions"]) == 7


async def test_idempotent_deposit_replays_the_first_result_and_changes_nothing(api: Api) -> None:
    _, headers = await api.register()
    key = {**headers, "Idempotency-Key": "dep-0001"}
    first = await api.client.post("/api/v1/balance/deposit", json={"amount": "25.50"}, headers=key)
    assert first.status_code == 201
    again = await api.client.post("/api/v1/balance/deposit", json={"amount": "25.50"}, headers=key)
    assert again.status_code == 201 and again.content == first.content
    reused = await api.client.post("/api/v1/balance/deposit", json={"amount": "30"}, headers=key)
    assert_problem(reused, 422, "idempotency_key_reused")
    assert (await balance(api, headers))["current_balance"] == "25.50"
    assert len((await ledger(api, headers))["transactions"]) == 1


async def test_idempotent_refusal_is_replayed_too(api: Api) -> None:
    _, headers = await api.register()
    key = {**headers, "Idempotency-Key": "wd-1"}
    first = await api.client.post("/api/v1/balance/withdraw", json={"amount": "5"}, headers=key)
    assert_problem(first, 422, "insufficient_funds")
    await api.deposit(headers, "10")
    again = await api.client.post("/api/v1/balance/withdraw", json={"amount": "5"}, headers=key)
    assert again.status_code == 422 and again.content == first.content
    assert (await balance(api, headers))["current_balance"] == "10.00"


async def test_concurrent_repeats_of_one_key_apply_once(api: Api) -> None:
    _, headers = await api.register()
    key = {**headers, "Idempotency-Key": "same-key"}
    results = await asyncio.gather(
        *(api.client.post("/api/v1/balance/deposit", json={"amount": "7"}, headers=key) for _ in range(10))
    )
    statuses = sorted(r.status_code for r in results)
    assert set(statuses) <= {201, 409} and statuses.count(201) >= 1
    assert (await balance(api, headers))["current_balance"] == "7.00"
    assert len((await ledger(api, headers))["transactions"]) == 1


async def test_bad_idempotency_key_is_422(api: Api) -> None:
    _, headers = await api.register()
    r = await api.client.post("/api/v1/balance/deposit", json={"amount": "1"},
                              headers={**headers, "Idempotency-Key": "x" * 300})
    assert_problem(r, 422, "validation_error")
    assert (await balance(api, headers))["current_balance"] == "0.00"


async def test_50_concurrent_withdrawals_of_10_from_100(api: Api) -> None:
    username, headers = await api.register()
    await api.deposit(headers, "100")
    results = await asyncio.gather(
        *(api.client.post("/api/v1/balance/withdraw", json={"amount": "10"}, headers=headers) for _ in range(50))
    )
    ok = [r for r in results if r.status_code == 201]
    refused = [r for r in results if r.status_code == 422]
    assert len(ok) == 10 and len(refused) == 40
    assert all(read(r)["code"] == "insufficient_funds" for r in refused)
    b = await balance(api, headers)
    assert b["current_balance"] == "0.00" and b["available_balance"] == "0.00"
    entries = (await ledger(api, headers, limit=100))["transactions"]
    assert len(entries) == 11
    assert sum(usd(e["available_change"]) for e in entries) == 0
    report = await run_audit(api.container.store)
    assert report.ok, report.violations


async def test_ledger_pages_with_cursor_newest_first_and_filters_by_type(api: Api) -> None:
    _, headers = await api.register()
    for i in range(1, 8):
        await api.deposit(headers, str(i))
    r = await api.client.post("/api/v1/balance/withdraw", json={"amount": "1"}, headers=headers)
    assert r.status_code == 201
    seen: list[Any] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = await ledger(api, headers, **params)
        seen += page["transactions"]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert [e["amount"] for e in seen] == ["1.00", "7.00", "6.00", "5.00", "4.00", "3.00", "2.00", "1.00"]
    assert len({e["transaction_id"] for e in seen}) == 8
    deposits = await ledger(api, headers, transaction_type="deposit", limit=100)
    assert [e["amount"] for e in deposits["transactions"]] == ["7.00", "6.00", "5.00", "4.00", "3.00", "2.00", "1.00"]
    offset = await ledger(api, headers, offset=2, limit=2)
    assert [e["amount"] for e in offset["transactions"]] == ["6.00", "5.00"]
    for bad in ({"limit": 0}, {"limit": 101}, {"cursor": "garbage!!"}, {"transaction_type": "nope"}):
        r = await api.client.get("/api/v1/balance/transactions", headers=headers, params=bad)
        assert_problem(r, 422, "validation_error")
    r = await api.client.get("/api/v1/balance/transactions", headers=headers, params={"unknown": "x"})
    assert r.status_code == 200


async def test_users_cannot_see_each_others_ledger(api: Api) -> None:
    _, a = await api.register()
    _, b = await api.register()
    await api.deposit(a, "10")
    assert (await ledger(api, b))["transactions"] == []
    assert (await balance(api, b))["current_balance"] == "0.00"
    assert await api.container.balance_dao.find_balance("nobody") is None
