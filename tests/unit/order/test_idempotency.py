"""The idempotency wrapper around a use case, against the SQLite engine: the use case's own
transaction carries the record's mark (no store op passed in), a replay returns the first answer,
an applied-but-unanswered key is rebuilt from what the work created."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import BaseModel
from starlette.requests import Request

from cnop.common.clock import SystemClock
from cnop.common.config import Settings
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.store import NotExists, Put
from cnop.common.exceptions import InsufficientFunds
from cnop.common.idempotency import IdempotencyRecords, applying_mark
from cnop.common.jsonio import loads
from cnop.common.money import UsdAmount
from cnop.services.idempotent import idempotent_outcome

USER = "dora"


class Made(BaseModel):
    made_id: str
    amount: UsdAmount


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, IdempotencyRecords]]:
    store = SQLiteStore(str(tmp_path / "store.db"))
    await store.create_tables()
    yield store, IdempotencyRecords(store, SystemClock(), Settings())  # the store expires records by real time
    await store.close()


def http_request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/api/v1/things", "headers": [], "query_string": b""})


def use_case(store: SQLiteStore, runs: list[str]):
    async def make() -> Made:
        made_id = f"thing{len(runs)}"
        ops = [Put("orders", {"pk": f"USER#{USER}", "sk": f"THING#{made_id}", "amount": Decimal("1.50")}, NotExists())]
        mark = applying_mark()
        runs.append("marked" if mark is not None else "plain")
        if mark is not None:
            ops.append(mark(made_id))
        await store.transact(ops)
        return Made(made_id=made_id, amount=Decimal("1.50"))

    return make


async def rebuild(made_id: str) -> Made:
    return Made(made_id=made_id, amount=Decimal("1.50"))


async def outcome(records: IdempotencyRecords, work, key: str | None, payload: object = "p"):
    return await idempotent_outcome(
        http_request(),
        records,
        username=USER,
        scope="thing",
        client_key=key,
        payload=payload,
        work=work,
        rebuild=rebuild,
    )


async def test_a_keyed_use_case_runs_once_and_its_transaction_carries_the_mark(world) -> None:
    store, records = world
    runs: list[str] = []
    first = await outcome(records, use_case(store, runs), "k-1")
    again = await outcome(records, use_case(store, runs), "k-1")
    assert runs == ["marked"]  # the replay did not run the work
    assert (first.status_code, again.status_code) == (201, 201) and first.body == again.body
    assert loads(first.body) == {"made_id": "thing0", "amount": "1.50"}
    assert applying_mark() is None  # the mark never outlives the wrapped call
    plain = await outcome(records, use_case(store, runs), None)
    assert runs == ["marked", "plain"] and plain.status_code == 201


async def test_a_business_refusal_is_stored_and_replayed(world) -> None:
    _, records = world
    calls = 0

    async def refused() -> Made:
        nonlocal calls
        calls += 1
        raise InsufficientFunds("Buying costs 10.00 USD, more than your available cash")

    first = await outcome(records, refused, "k-2")
    again = await outcome(records, refused, "k-2")
    assert calls == 1 and (first.status_code, again.status_code) == (422, 422) and first.body == again.body
    assert loads(first.body)["code"] == "insufficient_funds"


async def test_work_applied_but_never_answered_is_rebuilt_from_its_result(world) -> None:
    store, records = world
    runs: list[str] = []
    work = use_case(store, runs)

    async def dies_after_commit() -> Made:
        await work()
        raise asyncio.CancelledError  # the process stops between the commit and the answer

    with pytest.raises(asyncio.CancelledError):
        await outcome(records, dies_after_commit, "k-3")
    replay = await outcome(records, use_case(store, runs), "k-3")
    assert runs == ["marked"]  # applied once; the replay rebuilt the answer from the result id
    assert replay.status_code == 201 and loads(replay.body) == {"made_id": "thing0", "amount": "1.50"}
