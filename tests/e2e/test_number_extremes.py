"""Numbers at the extremes, sent to a real `cnop serve` (edge review findings 4 and 5).

Before the fix, `POST /api/v1/admin/prices` took `1e400`, `1e60` and `1e-2000000`, after which the
asset list, portfolios, insights and market buys answered 500 for everyone, and a buy of 0.01 SOL
cost 0.00 USD. Every extreme below must be a 422 problem that changes nothing, and every
valuation read must keep answering 200.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx2 as httpx
import pytest

from tests.support.edge_server import CNOP, CnopServer, base_env, cnop_server
from tests.support.wire import exact, read, usd

pytestmark = pytest.mark.system

PASSWORD = "Str0ng!Passw0rd"
EXTREMES = ["1e400", "1e60", "1e-2000000", "-1e400", "1E+999999999", "NaN", "Infinity", "-0", "0", "9" * 5000]
# Valid as it stands (the control test places it): a buy stop above the market (150), its limit above.
STOP_LIMIT_BUY: dict[str, Any] = {
    "order_type": "stop_limit_buy", "asset_id": "SOL", "quantity": "1", "price": "170", "stop_price": "160"
}  # fmt: skip
READS = [
    "/api/v1/inventory/assets",
    "/api/v1/inventory/assets/SOL",
    "/api/v1/portfolio",
    "/api/v1/balance/asset/SOL",
    "/api/v1/insights/portfolio",
    "/api/v1/balance",
    "/api/v1/orders",
]


def login(http: httpx.Client, username: str) -> dict[str, str]:
    r = http.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {read(r)['access_token']}"}


def raw_number(value: str) -> bytes:
    """`value` as a bare JSON number where it is one, else as a string."""
    try:
        json.loads(value)
        bare = not value.lstrip("-").isalpha()
    except ValueError:
        bare = False
    return value.encode() if bare else json.dumps(value).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CnopServer]:
    workdir = tmp_path_factory.mktemp("extremes")
    with cnop_server(
        workdir,
        {
            "CNOP_PRICE_SOURCE": "manual",
            "CNOP_RATE_LIMIT_PER_IP": "100000/minute",
            "CNOP_RATE_LIMIT_PER_USER": "100000/minute",
        },
    ) as running:
        env = base_env(workdir, {"CNOP_PRICE_SOURCE": "manual"})
        created = subprocess.run(
            [CNOP, "user", "create", "admin_edge", "--email", "admin@example.com", "--admin", "--password-stdin"],
            input=PASSWORD + "\n", text=True, capture_output=True, cwd=workdir, env=env, timeout=120,
        )  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr
        yield running


@pytest.fixture(scope="module")
def accounts(server: CnopServer) -> Iterator[dict[str, dict[str, str]]]:
    with server.client() as http:
        admin = login(http, "admin_edge")
        body = {"username": "holder_01", "email": "holder@example.com", "password": PASSWORD,
                "first_name": "Hold", "last_name": "Er"}  # fmt: skip
        assert http.post("/api/v1/auth/register", json=body).status_code == 201
        holder = login(http, "holder_01")
        for asset, price in (("SOL", "150"), ("BTC", "50000")):
            r = http.post("/api/v1/admin/prices", json={"asset_id": asset, "price": price}, headers=admin)
            assert r.status_code == 200, r.text
        assert http.post("/api/v1/balance/deposit", json={"amount": "1000"}, headers=holder).status_code == 201
        r = http.post("/api/v1/orders", json={"order_type": "market_buy", "asset_id": "SOL", "quantity": "1"},
                      headers=holder)  # fmt: skip
        assert r.status_code == 201, r.text
        yield {"admin": admin, "holder": holder}


def everything_of(http: httpx.Client, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "balance": read(http.get("/api/v1/balance", headers=headers)),
        "portfolio": {
            k: v for k, v in read(http.get("/api/v1/portfolio", headers=headers)).items() if k != "updated_at"
        },
        "orders": read(http.get("/api/v1/orders", headers=headers)),
        "ledger": read(http.get("/api/v1/balance/transactions", headers=headers)),
    }


def assert_reads_answer(http: httpx.Client, headers: dict[str, str]) -> None:
    for path in READS:
        r = http.get(path, headers=headers)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])


@pytest.mark.parametrize("value", EXTREMES, ids=lambda v: v[:12])
def test_an_extreme_admin_price_is_422_and_every_valuation_still_answers(
    server: CnopServer, accounts: dict[str, dict[str, str]], value: str
) -> None:
    with server.client() as http:
        before = read(http.get("/api/v1/inventory/assets/SOL"))
        held_before = everything_of(http, accounts["holder"])
        r = http.post(
            "/api/v1/admin/prices",
            content=b'{"asset_id": "SOL", "price": ' + raw_number(value) + b"}",
            headers={**accounts["admin"], "Content-Type": "application/json"},
        )
        assert r.status_code == 422, r.text[:300]
        problem = read(r)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert problem["code"] == "validation_error" and problem["request_id"] == r.headers["x-request-id"]
        after = read(http.get("/api/v1/inventory/assets/SOL"))
        assert exact(after["data"]["price_usd"]) == exact(before["data"]["price_usd"]) == 150
        assert everything_of(http, accounts["holder"]) == held_before
        assert_reads_answer(http, accounts["holder"])


@pytest.mark.parametrize("field", ["price", "stop_price", "quantity"])
@pytest.mark.parametrize("value", EXTREMES, ids=lambda v: v[:12])
def test_an_extreme_order_number_is_422_and_changes_nothing(
    server: CnopServer, accounts: dict[str, dict[str, str]], field: str, value: str
) -> None:
    body = dict(STOP_LIMIT_BUY)
    raw = json.dumps(body).replace(json.dumps(body[field]), "@@", 1).encode().replace(b'"@@"', raw_number(value))
    with server.client() as http:
        before = everything_of(http, accounts["holder"])
        r = http.post("/api/v1/orders", content=raw, headers={**accounts["holder"], "Content-Type": "application/json"})
        assert r.status_code == 422, r.text[:300]
        assert read(r)["code"] in {"validation_error", "invalid_order"}
        after = everything_of(http, accounts["holder"])
        assert after == before, (before, after)


def test_the_order_body_the_extremes_are_put_into_is_accepted_as_it_stands(
    server: CnopServer, accounts: dict[str, dict[str, str]]
) -> None:
    with server.client() as http:
        r = http.post("/api/v1/orders", json=STOP_LIMIT_BUY, headers=accounts["holder"])
        assert r.status_code == 201, r.text
        assert read(r)["data"]["status"] == "queued"
        cancel = http.delete(f"/api/v1/orders/{read(r)['data']['order_id']}", headers=accounts["holder"])
        assert cancel.status_code == 200


@pytest.mark.parametrize("path", ["deposit", "withdraw"])
@pytest.mark.parametrize("value", EXTREMES, ids=lambda v: v[:12])
def test_an_extreme_amount_is_422_and_changes_nothing(
    server: CnopServer, accounts: dict[str, dict[str, str]], path: str, value: str
) -> None:
    with server.client() as http:
        before = everything_of(http, accounts["holder"])
        r = http.post(
            f"/api/v1/balance/{path}",
            content=b'{"amount": ' + raw_number(value) + b"}",
            headers={**accounts["holder"], "Content-Type": "application/json"},
        )
        assert r.status_code == 422, r.text[:300]
        assert read(r)["code"] in {"validation_error", "daily_limit_exceeded"}
        after = everything_of(http, accounts["holder"])
        assert after == before, (before, after)


def test_a_small_buy_at_the_smallest_admin_price_still_costs_a_cent(
    server: CnopServer, accounts: dict[str, dict[str, str]]
) -> None:
    with server.client() as http:
        admin, holder = accounts["admin"], accounts["holder"]
        r = http.post("/api/v1/admin/prices", json={"asset_id": "DOGE", "price": "0.00000001"}, headers=admin)
        assert r.status_code == 200, r.text
        cash_before = usd(read(http.get("/api/v1/balance", headers=holder))["available_balance"])
        r = http.post("/api/v1/orders", json={"order_type": "market_buy", "asset_id": "DOGE", "quantity": "1"},
                      headers=holder)  # fmt: skip
        assert r.status_code == 201, r.text
        assert usd(read(r)["data"]["total_amount"]) == Decimal("0.01")  # rounded up: never free
        cash_after = usd(read(http.get("/api/v1/balance", headers=holder))["available_balance"])
        assert cash_before - cash_after == Decimal("0.01")
        assert_reads_answer(http, holder)


def test_the_server_log_shows_no_unhandled_exception(server: CnopServer, accounts: dict[str, dict[str, str]]) -> None:
    log = server.log()
    assert "unhandled_exception" not in log and "Traceback" not in log
