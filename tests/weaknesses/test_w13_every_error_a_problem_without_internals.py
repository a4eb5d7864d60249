"""Weak point 13: three error shapes, class names and exception text leaked, wrong statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import StoreFactory
from tests.support.api import Api, open_api
from tests.support.faulty_store import Fault, FaultyStore
from tests.support.wire import read

LEAKS = ("Traceback", "Error(", "Exception", ".py", "SELECT ", "INSERT ", "sqlite", "botocore", "line ")
PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}


def assert_problem(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = read(r)
    assert set(body) >= PROBLEM_KEYS, body
    assert body["status"] == status and body["code"] == code and body["request_id"] == r.headers["x-request-id"]
    assert body["type"].endswith(f"/{code}")
    assert not [leak for leak in LEAKS if leak in r.text], r.text


@pytest.fixture
async def faulty(store_factory: StoreFactory) -> AsyncIterator[tuple[Api, FaultyStore]]:
    made: list[FaultyStore] = []

    def factory() -> Any:
        made.append(FaultyStore(store_factory()))
        return made[-1]

    api, lifespan = await open_api(factory)
    yield api, made[0]
    await api.client.aclose()
    await lifespan.__aexit__(None, None, None)


async def test_every_kind_of_error_is_a_problem_with_a_stable_code(faulty: tuple[Api, FaultyStore]) -> None:
    api, store = faulty
    _, headers = await api.register()
    assert_problem(await api.client.get("/api/v1/nowhere"), 404, "not_found")
    assert_problem(await api.client.patch("/api/v1/balance", headers=headers), 405, "method_not_allowed")
    assert_problem(await api.client.get("/api/v1/balance"), 401, "not_authenticated")
    assert_problem(
        await api.client.get("/api/v1/balance", headers={"Authorization": "Bearer x.y.z"}), 401, "invalid_token"
    )
    r = await api.client.post("/api/v1/balance/deposit", json={"amount": "-1"}, headers=headers)
    assert_problem(r, 422, "validation_error")
    assert read(r)["errors"] and all(set(e) == {"field", "message"} for e in read(r)["errors"])
    r = await api.client.post(
        "/api/v1/balance/deposit", content=b"{not json", headers={**headers, "content-type": "application/json"}
    )
    assert_problem(r, 422, "validation_error")
    r = await api.client.post("/api/v1/balance/withdraw", json={"amount": "5"}, headers=headers)
    assert_problem(r, 422, "insufficient_funds")
    assert_problem(
        await api.client.get("/api/v1/orders/01ARZ3NDEKTSV4RRFFQ69G5FAV", headers=headers), 404, "order_not_found"
    )
    assert_problem(await api.client.get("/api/v1/admin/users/x/transactions", headers=headers), 403, "forbidden")
    r = await api.client.post("/api/v1/auth/login", json={"username": "nobody_at_all", "password": "Wrong!Passw0rd1"})
    assert_problem(r, 401, "invalid_credentials")
    # A store outage: a 503 the client may retry, not a 500. The first call of the request fails
    # (the caller is remembered from the requests above, so that is the balance read).
    store.arm(0, Fault.ERROR)
    r = await api.client.get("/api/v1/balance", headers=headers)
    store.disarm()
    assert_problem(r, 503, "store_unavailable")


async def test_an_unexpected_bug_answers_a_generic_500_that_leaks_nothing(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, headers = await api.register()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            "SELECT body FROM users WHERE pk='USER#x' -- /work/src/cnop/services/user/portfolio.py line 12"
        )

    # The route writes the body from dicts (`portfolio_wire`); the models' path breaks alike.
    for name in ("portfolio", "portfolio_wire"):
        monkeypatch.setattr(api.container.portfolio, name, broken)
    r = await api.client.get("/api/v1/portfolio", headers=headers)
    assert_problem(r, 500, "internal_error")
    assert "RuntimeError" not in r.text and "portfolio.py" not in r.text and "pk=" not in r.text
