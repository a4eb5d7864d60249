"""A hypothesis state machine: random deposits, withdrawals, market and resting orders, cancels,
price moves and expiries through the API; every invariant of docs/storage.md §2 holds after every step."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from cnop.audit import run_audit
from cnop.common.clock import FakeClock, isoformat
from cnop.common.database.store import ItemStore
from cnop.market.prices import Tick
from tests.support.api import open_api
from tests.support.wire import read

D = Decimal
ASSETS = {"BTC": D("50000"), "ETH": D("2500")}
QUANTITIES = {"BTC": ["0.001", "0.01", "0.05"], "ETH": ["0.01", "0.1", "1"]}
RESTING = [
    "limit_buy", "limit_sell", "stop_loss_buy", "stop_loss_sell", "stop_limit_buy", "stop_limit_sell",
    "take_profit_buy", "take_profit_sell", "trailing_stop_buy", "trailing_stop_sell",
]
ALLOWED = {200, 201, 409, 422}


def resting_body(kind: str, asset: str, quantity: str, price: Decimal, offset: Decimal, gtd: datetime | None) -> dict[str, Any]:
    above = (price * (1 + offset)).quantize(D("0.01"))
    below = (price * (1 - offset)).quantize(D("0.01"))
    buy = kind.endswith("_buy")
    body: dict[str, Any] = {"order_type": kind, "asset_id": asset, "quantity": quantity}
    if kind.startswith("limit"):
        body["price"] = str(below if buy else above)
    elif kind.startswith("take_profit"):
        body["stop_price"] = str(below if buy else above)
    elif kind.startswith("stop_loss"):
        body["stop_price"] = str(above if buy else below)
    elif kind.startswith("stop_limit"):
        body["stop_price"] = str(above if buy else below)
        body["price"] = str(above if buy else below)
    else:
        body["trail_percent"] = str((offset * 100).quantize(D("0.1")))
    if gtd is not None:
        body.update(time_in_force="gtd", expires_at=isoformat(gtd))
    return body


def make_machine(new_store: Any) -> type[RuleBasedStateMachine]:
    class Broker(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            self.loop = asyncio.new_event_loop()
            self.clock = FakeClock(datetime.now(UTC))
            self.api, self.lifespan = self.run(open_api(new_store(), clock=self.clock))
            self.prices = dict(ASSETS)
            self.users: list[dict[str, str]] = []
            self.refresh_prices()
            for _ in range(2):
                _, headers = self.run(self.api.register())
                self.users.append(headers)
                self.run(self.api.deposit(headers, "10000"))
                for asset, quantity in (("BTC", "0.05"), ("ETH", "1")):
                    r = self.run(self.api.order(headers, order_type="market_buy", asset_id=asset, quantity=quantity))
                    assert r.status_code == 201, r.text
            self.queued: list[tuple[int, str]] = []

        def teardown(self) -> None:
            if hasattr(self, "api"):
                self.run(self.api.client.aclose())
                self.run(self.lifespan.__aexit__(None, None, None))
                self.loop.close()

        def run(self, coro: Any) -> Any:
            return self.loop.run_until_complete(coro)

        def check(self, response: Any) -> Any:
            assert response.status_code in ALLOWED, response.text
            return response

        def refresh_prices(self) -> None:
            for asset, price in self.prices.items():
                self.api.set_price(asset, str(price))

        @rule(user=st.integers(0, 1), amount=st.sampled_from(["1", "50", "500", "5000"]))
        def deposit(self, user: int, amount: str) -> None:
            self.check(self.run(self.api.client.post("/api/v1/balance/deposit", json={"amount": amount}, headers=self.users[user])))

        @rule(user=st.integers(0, 1), amount=st.sampled_from(["1", "50", "500", "5000"]))
        def withdraw(self, user: int, amount: str) -> None:
            self.check(self.run(self.api.client.post("/api/v1/balance/withdraw", json={"amount": amount}, headers=self.users[user])))

        @rule(user=st.integers(0, 1), side=st.sampled_from(["market_buy", "market_sell"]),
              asset=st.sampled_from(sorted(ASSETS)), pick=st.integers(0, 2))
        def market_order(self, user: int, side: str, asset: str, pick: int) -> None:
            body = {"order_type": side, "asset_id": asset, "quantity": QUANTITIES[asset][pick]}
            self.check(self.run(self.api.order(self.users[user], **body)))

        @rule(user=st.integers(0, 1), kind=st.sampled_from(RESTING), asset=st.sampled_from(sorted(ASSETS)),
              pick=st.integers(0, 2), offset=st.sampled_from([D("0.005"), D("0.01"), D("0.03")]),
              gtd=st.sampled_from([None, 30, 120]))
        def resting_order(self, user: int, kind: str, asset: str, pick: int, offset: Decimal, gtd: int | None) -> None:
            expires = self.clock.now() + timedelta(seconds=gtd) if gtd else None
            body = resting_body(kind, asset, QUANTITIES[asset][pick], self.prices[asset], offset, expires)
            r = self.check(self.run(self.api.order(self.users[user], **body)))
            if r.status_code == 201 and read(r)["data"]["status"] == "queued":
                self.queued.append((user, read(r)["data"]["order_id"]))

        @rule(data=st.data())
        def cancel(self, data: st.DataObject) -> None:
            if not self.queued:
                return
            user, order_id = data.draw(st.sampled_from(self.queued))
            r = self.check(self.run(self.api.client.delete(f"/api/v1/orders/{order_id}", headers=self.users[user])))
            assert r.status_code in (200, 409)
            self.queued.remove((user, order_id))

        @rule(asset=st.sampled_from(sorted(ASSETS)), move=st.sampled_from(["0.94", "0.97", "0.99", "1.01", "1.03", "1.06"]))
        def move_price(self, asset: str, move: str) -> None:
            price = (self.prices[asset] * D(move)).quantize(D("0.01"))
            self.prices[asset] = price
            self.api.set_price(asset, str(price))
            self.run(self.api.container.triggers.process([Tick(asset, price, self.clock.now())]))

        @rule(seconds=st.sampled_from([10, 40, 150]))
        def time_passes(self, seconds: int) -> None:
            self.clock.advance(seconds)
            self.refresh_prices()
            self.run(self.api.container.triggers.expire_due())

        @invariant()
        def books_balance(self) -> None:
            if not hasattr(self, "api"):
                return
            store: ItemStore = self.api.container.store
            report = self.run(run_audit(store))
            assert report.ok, report.violations

    return Broker


@pytest.mark.slow
def test_random_trading_keeps_every_invariant(engine: str, request: pytest.FixtureRequest) -> None:
    if engine == "sqlite":
        from cnop.common.database.sqlite import SQLiteStore

        folder = tempfile.mkdtemp(prefix="cnop-stateful-")

        def new_store() -> Any:
            path = f"{folder}/{uuid.uuid4().hex}.db"
            return lambda: SQLiteStore(path)

        examples, steps = 15, 40
    else:
        from cnop.common.database.dynamodb import DynamoDBStore

        endpoint = request.getfixturevalue("dynamodb_endpoint")

        def new_store() -> Any:
            prefix = f"s{uuid.uuid4().hex[:12]}"
            return lambda: DynamoDBStore.for_local(endpoint, table_prefix=prefix)

        examples, steps = 4, 20
    machine = make_machine(lambda: new_store())
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        ),
    )
