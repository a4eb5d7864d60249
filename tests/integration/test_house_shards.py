"""The house inventory's shards on both engines (decision 0025): a trade takes a shard that holds
enough units, or several; the house refuses only what it lacks as a whole; the rebalancer
evens the shards out and grows an asset to the configured count; the audit adds them up."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cnop.audit import run_audit
from cnop.common.clock import FakeClock, isoformat
from cnop.common.config import Settings
from cnop.common.dao.asset_dao import AssetDAO
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.dao.holding_dao import HoldingDAO
from cnop.common.dao.house_dao import HouseInventory, HouseRebalancer, split
from cnop.common.dao.order_dao import OrderDAO
from cnop.common.database import keys
from cnop.common.database.store import ItemStore, Op, Put, Update
from cnop.common.database.transaction import Leg, Legs
from cnop.common.entities.asset import Asset
from cnop.common.entities.balance import BalanceTransaction, TransactionType
from cnop.common.entities.order import Order, OrderStatus, OrderType
from cnop.common.exceptions import TransactionConflict
from cnop.common.ids import new_id
from cnop.common.shared.lease import FencedLease
from cnop.common.shared.redis import open_redis
from cnop.services.order.settlement import GuardFailed, Settlement
from tests.conftest import StoreFactory
from tests.support.api import funded_user, open_api
from tests.support.house import house_totals

D = Decimal


async def open_house(store: ItemStore, quantity: str, shards: int) -> tuple[HouseInventory, Settlement]:
    clock = FakeClock()
    now = clock.now()
    house = HouseInventory(store, shards)
    btc = Asset(asset_id="BTC", name="Bitcoin", symbol="BTC", scale=8, created_at=now, updated_at=now)
    assert await AssetDAO(store, clock, house=house).create_asset(btc, D(quantity))
    balances = BalanceDAO(store, clock)
    profile = {
        **keys.user_key("alice"),
        keys.GSI1.pk_attr: keys.USERS_INDEX_PK,
        keys.GSI1.sk_attr: "alice",
        "username": "alice",
        "created_at": isoformat(now),
    }
    joined = Legs().add(Leg.USER, Put(keys.USERS, profile))
    await balances.create_balance("alice", tx=joined)
    await joined.commit(store)
    deposit = BalanceTransaction(
        transaction_id=new_id(),
        username="alice",
        transaction_type=TransactionType.DEPOSIT,
        amount=D("100000.00"),
        available_change=D("100000.00"),
        held_change=D("0.00"),
        description="Deposit",
        created_at=now,
    )
    await balances.create_transaction(deposit)
    return house, Settlement(store, balances, HoldingDAO(store, clock), house)


async def buy(store: ItemStore, settlement: Settlement, quantity: str) -> None:
    now = FakeClock().now()
    order = Order(
        order_id=new_id(),
        username="alice",
        order_type=OrderType.MARKET_BUY,
        asset_id="BTC",
        quantity=D(quantity),
        status=OrderStatus.COMPLETED,
        executed_price=D("1000"),
        total_amount=D(quantity) * 1000,
        executed_at=now,
        created_at=now,
        updated_at=now,
    )
    legs = Legs()
    await OrderDAO(store, FakeClock()).create_order(order, tx=legs)
    await settlement.settle_buy(order, legs)


async def shard_units(house: HouseInventory) -> list[Decimal]:
    return [item.quantity for item in (await house.read("BTC")).items]


def test_a_split_is_exact_at_the_asset_scale() -> None:
    assert split(D("10"), 3, 2) == [D("3.34"), D("3.33"), D("3.33")]
    assert split(D("1"), 1, 8) == [D("1")]
    assert sum(split(D("0.00000007"), 16, 8)) == D("0.00000007")


async def test_a_new_asset_spreads_its_house_units_over_its_shards(store: ItemStore) -> None:
    house, _ = await open_house(store, "10", 4)
    assert await shard_units(house) == [D("2.5")] * 4
    assert await house.quantity("BTC") == D("10")
    header = await store.get(keys.INVENTORY, keys.house_inventory_key("BTC"))
    assert header is not None and header["shards"] == 4 and header["initial_quantity"] == D("10")
    assert "quantity" not in header


async def test_a_buy_larger_than_any_shard_takes_several_and_the_house_refuses_only_what_it_lacks(
    store: ItemStore,
) -> None:
    house, settlement = await open_house(store, "10", 4)
    await buy(store, settlement, "3")  # each shard holds 2.5
    assert await house.quantity("BTC") == D("7")
    assert sum(await shard_units(house), D(0)) == D("7") and min(await shard_units(house)) >= 0
    state = await house.read("BTC")
    assert state.cash == D("3000")
    await buy(store, settlement, "7")  # everything the house has left
    assert await shard_units(house) == [D(0)] * 4
    with pytest.raises(GuardFailed) as failed:
        await buy(store, settlement, "0.00000001")
    assert failed.value.leg is Leg.HOUSE
    report = await run_audit(store)
    assert report.ok, report.violations


class OutrunHouse(HouseInventory):
    """A house where, between the read of the shards and the trade's commit, other trades always
    take the units from the shards it found (they land on the other shards: the house as a whole
    keeps them)."""

    async def cover_ops(self, asset_id: str, quantity: Decimal, cash: Decimal) -> list[Op] | None:
        ops = await super().cover_ops(asset_id, quantity, cash)
        if ops is not None:
            state = await self.read(asset_id)
            found = {op.key["pk"] for op in ops if isinstance(op, Update)}
            taken = [item for item in state.items if item.key["pk"] in found]
            others = [item for item in state.items if item.key["pk"] not in found]
            moved = sum((item.quantity for item in taken), D(0))
            await self.store.transact(
                [
                    *(Update(keys.INVENTORY, item.key, add={"quantity": -item.quantity}) for item in taken),
                    Update(keys.INVENTORY, others[0].key, add={"quantity": moved}),
                ]
            )
        return ops


async def test_a_buy_the_house_could_supply_but_other_trades_keep_outrunning_is_a_conflict_not_a_refusal(
    store: ItemStore,
) -> None:
    house, settlement = await open_house(store, "8", 4)
    outrun = Settlement(store, settlement.balances, settlement.holdings, OutrunHouse(store, 4))
    before = await store.get(keys.USERS, keys.balance_key("alice"))
    with pytest.raises(TransactionConflict):  # retryable (503), never "insufficient inventory"
        await buy(store, outrun, "3")  # more than any shard holds: the trade must find the units
    assert await house.quantity("BTC") == D("8")
    assert await store.get(keys.USERS, keys.balance_key("alice")) == before  # nothing applied
    await buy(store, settlement, "3")  # without the competition it is made
    assert await house.quantity("BTC") == D("5")
    assert (await run_audit(store)).ok


async def test_the_rebalancer_tops_up_a_drained_shard_and_keeps_the_total(store: ItemStore) -> None:
    house, _ = await open_house(store, "8", 4)
    await store.transact(
        [
            Update(keys.INVENTORY, keys.house_shard_key("BTC", 0), add={"quantity": D("-1.9")}),
            Update(keys.INVENTORY, keys.house_shard_key("BTC", 3), add={"quantity": D("1.9")}),
        ]
    )
    assert await shard_units(house) == [D("0.1"), D("2"), D("2"), D("3.9")]
    assert await house.rebalance("BTC", 8) == 1
    assert await shard_units(house) == [D("2"), D("2"), D("2"), D("2")]
    assert await house.rebalance("BTC", 8) == 0  # balanced: nothing to do
    assert (await run_audit(store)).ok


async def test_the_rebalancer_grows_an_asset_to_the_configured_shards(store: ItemStore) -> None:
    await open_house(store, "8", 2)
    wider = HouseInventory(store, 4)
    assert await wider.rebalance("BTC", 8) >= 2
    header = await store.get(keys.INVENTORY, keys.house_inventory_key("BTC"))
    assert header is not None and header["shards"] == 4
    units = await shard_units(wider)
    assert len(units) == 4 and sum(units, D(0)) == D("8") and min(units) >= D("1")
    assert (await run_audit(store)).ok


async def test_the_audit_counts_every_shard_and_flags_a_stray_or_negative_one(store: ItemStore) -> None:
    await open_house(store, "8", 2)
    await store.transact(
        [
            Update(keys.INVENTORY, keys.house_shard_key("BTC", 0), add={"quantity": D("-5")}),
            Update(keys.INVENTORY, keys.house_shard_key("BTC", 1), add={"quantity": D("1")}),
            Update(keys.INVENTORY, keys.house_shard_key("BTC", 5), add={"quantity": D("4")}),
        ]
    )
    report = await run_audit(store)
    assert report.violations == [
        "BTC: negative house shard 0 -1.00000000",
        "BTC: house shard 5 beyond the 2 the header counts",
    ]


async def drain_shard_zero(store: ItemStore) -> None:
    await store.transact(
        [
            Update(keys.INVENTORY, keys.house_shard_key("BTC", 0), add={"quantity": D("-1.9")}),
            Update(keys.INVENTORY, keys.house_shard_key("BTC", 1), add={"quantity": D("1.9")}),
        ]
    )


async def test_the_rebalancer_round_covers_every_asset_in_process(store: ItemStore) -> None:
    house, _ = await open_house(store, "8", 4)
    await drain_shard_zero(store)
    rebalancer = HouseRebalancer(house, AssetDAO(store, FakeClock(), house=house).all_assets, 5.0)
    assert await rebalancer.round() == 1
    assert await shard_units(house) == [D("2")] * 4


async def test_only_the_holder_of_the_house_rebalance_lease_rebalances(
    store: ItemStore, redis_url: str, redis_prefix: str
) -> None:
    house, _ = await open_house(store, "8", 4)
    await drain_shard_zero(store)
    shared = open_redis(Settings(redis_url=redis_url, redis_prefix=redis_prefix))
    assert shared is not None
    try:
        assets = AssetDAO(store, FakeClock(), house=house).all_assets
        first = HouseRebalancer(house, assets, 5.0, FencedLease(shared, "house-rebalance", "a", 15.0))
        second = HouseRebalancer(house, assets, 5.0, FencedLease(shared, "house-rebalance", "b", 15.0))
        assert await first.round() == 1
        await drain_shard_zero(store)
        assert await second.round() == 0  # the lease is the first's
        assert await shard_units(house) == [D("0.1"), D("3.9"), D("2"), D("2")]
        assert await first.round() == 1  # the holder renews it and rebalances
        assert await shard_units(house) == [D("2")] * 4
    finally:
        await shared.close()


async def test_the_alpaca_quote_reports_the_house_units_over_every_shard(store_factory: StoreFactory) -> None:
    api, lifespan = await open_api(store_factory, house_shards=8)
    try:
        _, headers = await funded_user(api, "10000")
        api.set_price("BTC", "50000")
        url = "/alpaca/v1beta3/crypto/us/latest/quotes?symbols=BTC/USD"
        assert (await api.client.get(url)).json()["quotes"]["BTC/USD"]["as"] == "500"
        r = await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.12345678")
        assert r.status_code == 201, r.text
        assert (await api.client.get(url)).json()["quotes"]["BTC/USD"]["as"] == "499.87654322"
        assert await house_totals(api.container.store, "BTC") == {"quantity": D("499.87654322"), "cash": D("6172.84")}
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)
