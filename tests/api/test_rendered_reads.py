"""Hot reads: kept renderings give the very bytes a fresh rendering gives, across ticks and writes;
the portfolio reads the cash balance and the holdings in one query.

The asset list and asset detail bodies are rendered once per asset list and price-book version
(`cnop.services.inventory.service`). Each answer here is compared, byte for byte, with what the
routes wrote before they kept anything: the response model built from the assets as stored
(read without any cache) and the price book, encoded by `jsonio.dumps`.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from cnop.common.clock import FakeClock
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.database import keys
from cnop.common.database.store import Item, ItemStore, Key, Page, Query, SortKey, StoreWrapper, Update
from cnop.common.jsonio import dumps
from cnop.common.shared.invalidation import ASSET
from cnop.market.prices import Tick
from cnop.services.inventory.schemas import AssetDetailResponse
from cnop.services.inventory.service import InventoryService
from tests.conftest import StoreFactory
from tests.support.api import Api, funded_user, open_api
from tests.support.wire import read

# Headers that differ from one answer to the next whatever the body.
_PER_REQUEST = {"x-request-id", "x-ratelimit-remaining", "x-ratelimit-reset", "date", "x-process-time"}


def fresh_inventory(api: Api) -> InventoryService:
    """The inventory use cases on a DAO that keeps nothing: every read goes to the store."""
    c = api.container
    return InventoryService(AssetDAO(c.store, c.clock, cache_seconds=0), c.price_book, c.catalogue, c.clock)


async def fresh_list(api: Api, params: dict[str, Any]) -> bytes:
    page = await fresh_inventory(api).list_assets(
        active_only=params.get("active_only", "true") == "true",
        category=params.get("category"),
        limit=params.get("limit", 50),
        cursor=params.get("cursor"),
    )
    return dumps(page)


async def fresh_detail(api: Api, asset_id: str) -> bytes:
    inventory = fresh_inventory(api)
    asset = await inventory.assets.get_asset(asset_id)
    return dumps(AssetDetailResponse(data=inventory.asset_detail(asset)))


def stable_headers(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in _PER_REQUEST}


async def check_list(api: Api, params: dict[str, Any]) -> Any:
    r = await api.client.get("/api/v1/inventory/assets", params=params)
    assert r.status_code == 200, r.text
    assert r.content == await fresh_list(api, params), params
    assert r.headers["content-type"] == "application/json"
    assert r.headers["content-length"] == str(len(r.content))
    return r


async def check_detail(api: Api, asset_id: str) -> Any:
    r = await api.client.get(f"/api/v1/inventory/assets/{asset_id}")
    assert r.status_code == 200, r.text
    assert r.content == await fresh_detail(api, asset_id.upper()), asset_id
    assert r.headers["content-type"] == "application/json"
    return r


async def admin_toggle(api: Api, admin: dict[str, str], asset_id: str, active: bool) -> None:
    action = "activate" if active else "deactivate"
    r = await api.client.post(f"/api/v1/admin/assets/{asset_id}/{action}", headers=admin)
    assert r.status_code == 200, r.text


async def test_kept_asset_bodies_follow_ticks_and_asset_writes(fake_clock_api: tuple[Api, FakeClock]) -> None:
    api, clock = fake_clock_api
    admin = await api.admin()
    pages = [{"limit": 250}, {}, {"limit": 7}, {"active_only": "false", "limit": 250}]
    first = await check_list(api, {"limit": 250})
    again = await check_list(api, {"limit": 250})  # the kept body, with the same headers
    assert again.content == first.content and stable_headers(again) == stable_headers(first)
    detail = await check_detail(api, "BTC")
    assert stable_headers(await check_detail(api, "btc")) == stable_headers(detail)

    # A tick: the list and the detail show it at once.
    clock.advance(5)
    api.set_price("BTC", "70123.45")
    body = read(await check_list(api, {"limit": 250}))
    assert next(a for a in body["data"] if a["asset_id"] == "BTC")["price_usd"] == "70123.45"
    assert read(await check_detail(api, "BTC"))["data"]["high_24h"] == "70123.45"

    # An asset write through the admin routes: counts, pages and the detail follow it.
    await admin_toggle(api, admin, "SOL", active=False)
    for params in pages:
        await check_list(api, params)
    listed = read(await check_list(api, {"limit": 250}))
    assert "SOL" not in [a["asset_id"] for a in listed["data"]]
    assert listed["active_count"] == listed["total_count"] - 1
    assert read(await check_detail(api, "SOL"))["data"]["availability_status"] == "unavailable"
    await admin_toggle(api, admin, "SOL", active=True)
    assert read(await check_detail(api, "SOL"))["data"]["is_active"] is True
    cursor = read(await check_list(api, {"limit": 7}))["next_cursor"]
    await check_list(api, {"limit": 7, "cursor": cursor})

    # A batch of ticks for many assets at a later moment, and one for an asset at the same moment.
    clock.advance(7200)
    api.container.price_book.apply(
        [Tick("ETH", Decimal("2999.99"), clock.now()), Tick("SOL", Decimal("0.00000123"), clock.now())]
    )
    api.set_price("ETH", "3001")
    for params in pages:
        await check_list(api, params)
    for asset_id in ("BTC", "ETH", "SOL"):
        await check_detail(api, asset_id)


async def test_an_asset_change_announced_by_another_process_reaches_the_kept_bodies(
    fake_clock_api: tuple[Api, FakeClock],
) -> None:
    """Another process writes the asset and publishes on the invalidation channel (as AssetDAO does)."""
    api, _ = fake_clock_api
    before = read(await check_list(api, {"limit": 250}))
    await check_detail(api, "ETH")
    await api.container.store.transact(
        [Update(keys.INVENTORY, keys.asset_key("ETH"), set={"name": "Ether (renamed)", "is_active": False})]
    )
    await api.container.invalidations.publish(ASSET, "ETH")
    after = read(await check_list(api, {"limit": 250}))
    assert after["active_count"] == before["active_count"] - 1
    detail = read(await check_detail(api, "ETH"))["data"]
    assert detail["name"] == "Ether (renamed)" and detail["is_active"] is False


async def test_random_ticks_writes_and_reads_always_answer_as_a_fresh_rendering(
    fake_clock_api: tuple[Api, FakeClock],
) -> None:
    api, clock = fake_clock_api
    admin = await api.admin()
    rng = random.Random(16)
    assets = ["BTC", "ETH", "SOL", "ADA", "DOGE"]
    categories = sorted({a.category for a in api.container.catalogue if a.category})
    inactive: set[str] = set()
    for _ in range(60):
        step = rng.random()
        if step < 0.3:
            clock.advance(rng.choice([0, 1, 7, 59, 300]))
            price = Decimal(rng.randint(1, 10**9)).scaleb(-rng.randint(0, 8))
            api.set_price(rng.choice(assets), str(price))
        elif step < 0.45:
            asset_id = rng.choice(assets)
            await admin_toggle(api, admin, asset_id, active=asset_id in inactive)
            inactive ^= {asset_id}
        elif step < 0.8:
            params: dict[str, Any] = {"limit": rng.choice([1, 7, 50, 250])}
            if rng.random() < 0.3:
                params["active_only"] = "false"
            if rng.random() < 0.3:
                params["category"] = rng.choice([*categories, "nothing-like-it"])
            await check_list(api, params)
        else:
            await check_detail(api, rng.choice(assets))


# --- the portfolio: one query for the cash balance and the holdings ----------------------------


class CountingStore(StoreWrapper):
    """Passes every call on and records it: (method, partition, sort key or query range)."""

    def __init__(self, inner: ItemStore) -> None:
        super().__init__(inner)
        self.calls: list[tuple[str, str, Any]] = []

    async def _get(self, table: str, key: Key, consistent: bool) -> Item | None:
        self.calls.append(("get", key["pk"], key["sk"]))
        return await super()._get(table, key, consistent)

    async def _batch_get(self, table: str, keys_: list[Key]) -> list[Item]:
        self.calls.extend(("batch_get", k["pk"], k["sk"]) for k in keys_)
        return await super()._batch_get(table, keys_)

    async def _query(self, query: Query) -> Page:
        self.calls.append(("query", query.pk, query.sk))
        return await super()._query(query)


@pytest.fixture
async def counted(store_factory: StoreFactory) -> AsyncIterator[tuple[Api, CountingStore]]:
    made: list[CountingStore] = []

    def factory() -> Any:
        made.append(CountingStore(store_factory()))
        return made[-1]

    api, lifespan = await open_api(factory)
    yield api, made[0]
    await api.client.aclose()
    await lifespan.__aexit__(None, None, None)


async def _busy_user(api: Api) -> tuple[str, dict[str, str]]:
    """A user with something of every kind in their partition: ledger, limits, idempotency, keys, holds."""
    username, headers = await funded_user(api, "5000")
    r = await api.client.post(
        "/api/v1/balance/deposit", json={"amount": "10"}, headers={**headers, "Idempotency-Key": "k-1"}
    )
    assert r.status_code == 201, r.text
    r = await api.client.post("/api/v1/auth/api-keys", json={"label": "bot"}, headers=headers)
    assert r.status_code == 201, r.text
    for asset, quantity in (("BTC", "0.001"), ("ETH", "0.01"), ("DOGE", "100")):
        assert (await api.order(headers, order_type="market_buy", asset_id=asset, quantity=quantity)).status_code == 201
    resting = await api.order(headers, order_type="limit_sell", asset_id="ETH", quantity="0.004", price="900000")
    assert resting.status_code == 201, resting.text
    return username, headers


async def test_the_portfolio_is_one_query_with_no_read_per_holding(counted: tuple[Api, CountingStore]) -> None:
    api, store = counted
    username, headers = await _busy_user(api)
    assert (await api.client.get("/api/v1/portfolio", headers=headers)).status_code == 200  # assets cached
    store.calls.clear()
    r = await api.client.get("/api/v1/portfolio", headers=headers)
    assert r.status_code == 200, r.text
    assert len(read(r)["assets"]) == 3
    partition = [call for call in store.calls if call[1] == keys.user_pk(username)]
    assert [c for c in partition if c[0] == "query"] == [
        ("query", keys.user_pk(username), SortKey.between(*keys.BALANCE_AND_HOLDINGS))
    ]
    reads = {c[2] for c in partition if c[0] != "query"}
    assert keys.BALANCE_USD not in reads and not any(sk.startswith(keys.HOLDING_PREFIX) for sk in reads)
    assert not [c for c in store.calls if c[1].startswith("ASSET#")]  # names from the cached asset list


async def test_balance_and_holdings_read_together_equal_reading_them_apart(api: Api) -> None:
    username, _ = await _busy_user(api)
    c = api.container
    balance, holdings = await c.holding_dao.get_balance_and_holdings(username)
    assert balance == await c.balance_dao.get_balance(username)
    assert holdings == await c.holding_dao.get_holdings(username) and len(holdings) == 3
    # The range holds nothing else of the user's (ledger, limits, idempotency, API keys, profile).
    page = await c.store.query(
        keys.USERS, keys.user_pk(username), sk=SortKey.between(*keys.BALANCE_AND_HOLDINGS), limit=500
    )
    assert sorted(keys.sort_key_of(item) for item in page.items) == sorted(
        [keys.BALANCE_USD, *(keys.holding_sk(h.asset_id) for h in holdings)]
    )
    everything = await c.store.query(keys.USERS, keys.user_pk(username), limit=500)
    kinds = {keys.sort_key_of(item).split("#")[0] for item in everything.items}
    assert {"TXN", "LIMIT", "IDEM", "APIKEYS", "PROFILE", "BALANCE", "HOLDING"} <= kinds
    # A user without a balance item (not a registered user) has a zero one, as get_balance says.
    none, nothing = await c.holding_dao.get_balance_and_holdings("nobody_at_all")
    assert nothing == [] and none.available == Decimal("0.00") and none.held == Decimal("0.00")
