"""Chart history survives a restart of a real `cnop serve` (kept in the store, read back at start)."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.support.web import ADMIN, PASSWORD, cnop_server, create_admin, server_env, wait_until
from tests.support.wire import exact, read

pytestmark = pytest.mark.system


def test_price_history_is_still_there_after_a_restart(tmp_path: Path) -> None:
    create_admin(server_env(tmp_path))
    prices = ["41000.5", "41250.25", "40990"]
    with cnop_server(tmp_path) as first:
        with first.api() as http:
            token = read(http.post("/api/v1/auth/login", json={"username": ADMIN, "password": PASSWORD}))[
                "access_token"
            ]
            for price in prices:
                r = http.post(
                    "/api/v1/admin/prices",
                    json={"asset_id": "BTC", "price": price},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert r.status_code == 200, r.text
                time.sleep(1.2)  # the recorder writes once a second here (CNOP_PRICE_HISTORY_FLUSH_SECONDS=1)
            before = read(http.get("/api/v1/inventory/assets/BTC/prices", params={"interval": "raw"}))["data"]["prices"]
        assert [exact(p["price"]) for p in before[-3:]] == [Decimal(p) for p in prices]

    with cnop_server(tmp_path) as second, second.api() as http:

        def history() -> list[Decimal]:
            body = read(http.get("/api/v1/inventory/assets/BTC/prices", params={"interval": "raw"}))
            return [exact(p["price"]) for p in body["data"]["prices"]]

        after = wait_until(lambda: history() if len(history()) >= 2 else None)
    # The minute and hour points of the last flush come back (the latest tick of each bucket),
    # before the new process's own starting price.
    assert Decimal("40990") in after[:-1]
    assert after[-1] == Decimal("67250")  # the catalogue price the new process starts from
