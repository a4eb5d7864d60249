"""BalanceDAO's seed methods on the SQLite engine: a balance never changes without its ledger
entry, the guard keeps cash from going below zero, and writes can join a use case's transaction."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cnop.common.clock import FakeClock
from cnop.common.dao.balance_dao import BalanceDAO
from cnop.common.database.sqlite import SQLiteStore
from cnop.common.database.transaction import GuardFailed, Leg, Legs
from cnop.common.entities.balance import BalanceTransaction, TransactionStatus, TransactionType
from cnop.common.exceptions import ConditionFailed
from cnop.common.ids import new_id

D = Decimal
USER = "dave"


def entry(
    clock: FakeClock, kind: TransactionType, available: str, held: str = "0.00", **more: object
) -> BalanceTransaction:
    change = D(available) if D(available) else D(held)
    return BalanceTransaction(
        transaction_id=new_id(),
        username=USER,
        transaction_type=kind,
        amount=abs(change),
        available_change=D(available),
        held_change=D(held),
        description=kind.value,
        created_at=clock.now(),
        **more,  # type: ignore[arg-type]
    )


@pytest.fixture
def balances(store: SQLiteStore, clock: FakeClock) -> BalanceDAO:
    return BalanceDAO(store, clock)


async def test_create_balance_starts_at_zero_and_only_once(balances: BalanceDAO, clock: FakeClock) -> None:
    missing = await balances.get_balance(USER)  # no balance item yet: reads as zero
    assert (missing.available, missing.held, missing.current_balance) == (D("0.00"), D("0.00"), D("0.00"))
    created = await balances.create_balance(USER)
    assert created == await balances.get_balance(USER)
    assert (created.total_deposited, created.total_withdrawn, created.currency) == (D("0.00"), D("0.00"), "USD")
    with pytest.raises(ConditionFailed):
        await balances.create_balance(USER)


async def test_create_transaction_records_the_entry_and_applies_it(balances: BalanceDAO, clock: FakeClock) -> None:
    await balances.create_balance(USER)
    deposit = entry(clock, TransactionType.DEPOSIT, "100.10")
    assert await balances.create_transaction(deposit, deposited=D("100.10")) == deposit
    balance = await balances.get_balance(USER)
    assert (balance.available, balance.total_deposited) == (D("100.10"), D("100.10"))
    assert await balances.get_transaction(USER, deposit.transaction_id) == deposit
    assert (await balances.get_user_transactions(USER)).items == [deposit]


async def test_create_transaction_never_takes_cash_below_zero(balances: BalanceDAO, clock: FakeClock) -> None:
    await balances.create_balance(USER)
    await balances.create_transaction(entry(clock, TransactionType.DEPOSIT, "50.00"))
    with pytest.raises(ConditionFailed):
        await balances.create_transaction(entry(clock, TransactionType.WITHDRAW, "-50.01"), withdrawn=D("50.01"))
    with pytest.raises(ConditionFailed):
        await balances.create_transaction(entry(clock, TransactionType.ORDER_RELEASE, "10.00", "-10.00"))
    balance = await balances.get_balance(USER)
    assert (balance.available, balance.held, balance.total_withdrawn) == (D("50.00"), D("0.00"), D("0.00"))
    assert len((await balances.get_user_transactions(USER)).items) == 1  # no entry without its balance change
    with pytest.raises(ConditionFailed):  # no balance item: nothing to apply to
        await balances.create_transaction(
            entry(clock, TransactionType.DEPOSIT, "1.00").model_copy(update={"username": "nobody"})
        )


async def test_several_entries_apply_their_sum_in_one_balance_leg(
    balances: BalanceDAO, store: SQLiteStore, clock: FakeClock
) -> None:
    await balances.create_balance(USER)
    await balances.create_transaction(entry(clock, TransactionType.DEPOSIT, "100.00"))
    await balances.create_transaction(entry(clock, TransactionType.ORDER_HOLD, "-40.00", "40.00"))
    payment = entry(clock, TransactionType.ORDER_PAYMENT, "0.00", "-30.00")
    refund = entry(clock, TransactionType.ORDER_REFUND, "10.00", "-10.00")
    legs = Legs()
    assert await balances.create_transaction(payment, refund, tx=legs) == payment
    assert legs.names == [Leg.LEDGER, Leg.LEDGER, Leg.BALANCE]
    before = await balances.get_balance(USER)
    assert (before.available, before.held) == (D("60.00"), D("40.00"))  # nothing applied before the commit
    await legs.commit(store)
    after = await balances.get_balance(USER)
    assert (after.available, after.held) == (D("70.00"), D("0.00"))
    overspend = Legs()
    await balances.create_transaction(entry(clock, TransactionType.WITHDRAW, "-70.01"), tx=overspend)
    with pytest.raises(GuardFailed) as failed:
        await overspend.commit(store)
    assert (failed.value.leg, failed.value.index) == (Leg.BALANCE, 1)


async def test_update_balance_applies_an_adjustment_through_its_entry(balances: BalanceDAO, clock: FakeClock) -> None:
    await balances.create_balance(USER)
    adjustment = entry(clock, TransactionType.SYSTEM_ADJUSTMENT, "12.34")
    balance = await balances.update_balance(adjustment)
    assert balance.available == D("12.34") and balance == await balances.get_balance(USER)
    assert (await balances.get_user_transactions(USER)).items == [adjustment]


async def test_get_user_transactions_pages_newest_first_and_filters_by_type(
    balances: BalanceDAO, clock: FakeClock
) -> None:
    await balances.create_balance(USER)
    written = []
    for kind, amount in ((TransactionType.DEPOSIT, "5.00"), (TransactionType.WITHDRAW, "-1.00")) * 3:
        clock.advance(1)
        written.append(entry(clock, kind, amount))
        await balances.create_transaction(written[-1])
    newest_first = list(reversed(written))
    first = await balances.get_user_transactions(USER, limit=4)
    rest = await balances.get_user_transactions(USER, limit=4, cursor=first.next_cursor)
    assert first.has_more and not rest.has_more
    assert first.items + rest.items == newest_first
    deposits = await balances.get_user_transactions(USER, limit=2, transaction_type=TransactionType.DEPOSIT)
    more = await balances.get_user_transactions(
        USER, limit=2, cursor=deposits.next_cursor, transaction_type=TransactionType.DEPOSIT
    )
    assert deposits.items + more.items == [e for e in newest_first if e.transaction_type is TransactionType.DEPOSIT]


async def test_update_transaction_status_changes_an_existing_entry_only(
    balances: BalanceDAO, store: SQLiteStore, clock: FakeClock
) -> None:
    await balances.create_balance(USER)
    pending = entry(clock, TransactionType.DEPOSIT, "1.00", status=TransactionStatus.PENDING)
    await balances.create_transaction(pending)
    await balances.update_transaction_status(USER, pending.transaction_id, TransactionStatus.COMPLETED)
    stored = await balances.get_transaction(USER, pending.transaction_id)
    assert stored == pending.model_copy(update={"status": TransactionStatus.COMPLETED})
    with pytest.raises(ConditionFailed):
        await balances.update_transaction_status(USER, "no-such-entry", TransactionStatus.FAILED)
    legs = Legs()
    await balances.update_transaction_status(USER, pending.transaction_id, TransactionStatus.CANCELLED, tx=legs)
    assert legs.names == [Leg.LEDGER]
    await legs.commit(store)
    cancelled = await balances.get_transaction(USER, pending.transaction_id)
    assert cancelled is not None and cancelled.status is TransactionStatus.CANCELLED
