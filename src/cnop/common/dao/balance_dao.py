"""BalanceDAO: cash balances and the ledger. A balance never changes without its ledger entry."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from cnop.common.clock import Clock, isoformat, parse_isoformat
from cnop.common.database import keys
from cnop.common.database.store import (
    And,
    Condition,
    Exists,
    Ge,
    InvalidCursor,
    Item,
    ItemStore,
    NotExists,
    Page,
    Put,
    SortKey,
    Update,
    decode_cursor,
    encode_cursor,
)
from cnop.common.database.transaction import Leg, Legs
from cnop.common.entities.balance import Balance, BalanceTransaction, TransactionStatus, TransactionType

ZERO = Decimal("0.00")


def balance_item(username: str, now: datetime) -> Item:
    stamp = isoformat(now)
    return {
        **keys.balance_key(username),
        "username": username,
        "available": ZERO,
        "held": ZERO,
        "total_deposited": ZERO,
        "total_withdrawn": ZERO,
        "currency": "USD",
        "created_at": stamp,
        "updated_at": stamp,
    }


def balance_from_item(item: Item) -> Balance:
    return Balance(
        username=item["username"],
        available=item["available"],
        held=item["held"],
        total_deposited=item["total_deposited"],
        total_withdrawn=item["total_withdrawn"],
        currency=item.get("currency", "USD"),
        created_at=parse_isoformat(item["created_at"]),
        updated_at=parse_isoformat(item["updated_at"]),
    )


def entry_to_item(entry: BalanceTransaction) -> Item:
    return {
        **keys.ledger_key(entry.username, entry.transaction_id),
        **keys.ledger_type_index(entry.username, entry.transaction_type.value, keys.ledger_sk(entry.transaction_id)),
        "transaction_id": entry.transaction_id,
        "username": entry.username,
        "transaction_type": entry.transaction_type.value,
        "amount": entry.amount,
        "available_change": entry.available_change,
        "held_change": entry.held_change,
        "status": entry.status.value,
        "description": entry.description,
        "order_id": entry.order_id,
        "created_at": isoformat(entry.created_at),
    }


def entry_from_item(item: Item) -> BalanceTransaction:
    return BalanceTransaction(
        transaction_id=item["transaction_id"],
        username=item["username"],
        transaction_type=TransactionType(item["transaction_type"]),
        amount=item["amount"],
        available_change=item["available_change"],
        held_change=item["held_change"],
        status=TransactionStatus(item["status"]),
        description=item["description"],
        order_id=item.get("order_id"),
        created_at=parse_isoformat(item["created_at"]),
    )


class BalanceDAO:
    def __init__(self, store: ItemStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def create_balance(self, username: str, *, tx: Legs | None = None) -> Balance:
        """A zero USD balance for a new user; with `tx`, as leg `balance` of the use case's
        transaction (registration creates it with the user)."""
        op = Put(keys.USERS, balance_item(username, self.clock.now()), NotExists())
        if tx is not None:
            tx.add(Leg.BALANCE, op)
        else:
            await self.store.transact([op])
        return balance_from_item(op.item)

    async def get_balance(self, username: str) -> Balance:
        item = await self.store.get(keys.USERS, keys.balance_key(username))
        if item is None:
            return balance_from_item(balance_item(username, self.clock.now()))
        return balance_from_item(item)

    async def find_balance(self, username: str) -> Balance | None:
        """The stored balance, or None when the user has none (`get_balance` answers zero then)."""
        item = await self.store.get(keys.USERS, keys.balance_key(username))
        return balance_from_item(item) if item is not None else None

    async def create_transaction(
        self,
        entry: BalanceTransaction,
        *more: BalanceTransaction,
        deposited: Decimal = ZERO,
        withdrawn: Decimal = ZERO,
        tx: Legs | None = None,
    ) -> BalanceTransaction:
        """Record ledger entries (`entry`, then `more`, of one user) and apply their sum to the
        balance in the same transaction: a balance never changes without its ledger entry.

        The entries are leg `ledger`, the balance update leg `balance`, guarded so neither
        available nor held cash can go below zero: that condition, not a lock, is what makes
        concurrent spending safe. `deposited` / `withdrawn` add to the balance's running totals.
        With `tx` the legs join the use case's transaction; alone, they apply at once.
        """
        entries = (entry, *more)
        available = sum((e.available_change for e in entries), ZERO)
        held = sum((e.held_change for e in entries), ZERO)
        guards: list[Condition] = [Exists()]
        if available < 0:
            guards.append(Ge("available", -available))
        if held < 0:
            guards.append(Ge("held", -held))
        add: dict[str, Decimal] = {"available": available, "held": held}
        if deposited:
            add["total_deposited"] = deposited
        if withdrawn:
            add["total_withdrawn"] = withdrawn
        legs = tx if tx is not None else Legs()
        legs.add(Leg.LEDGER, *(Put(keys.USERS, entry_to_item(e), NotExists()) for e in entries))
        legs.add(
            Leg.BALANCE,
            Update(
                keys.USERS,
                keys.balance_key(entry.username),
                set={"updated_at": isoformat(entries[-1].created_at)},
                add=add,
                condition=And(*guards),
            ),
        )
        if tx is None:
            await self.store.transact(legs.ops)
        return entry

    async def update_balance(self, entry: BalanceTransaction) -> Balance:
        """Apply a (system) adjustment through its ledger entry and return the new balance."""
        await self.create_transaction(entry)
        return await self.get_balance(entry.username)

    async def get_user_transactions(
        self,
        username: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        transaction_type: TransactionType | None = None,
    ) -> Page[BalanceTransaction]:
        """The user's ledger, newest first; with a type, that type's key range of the ledger index.

        A cursor is a position in the user's ledger (the key of the last entry seen), whichever
        listing made it, so a page of one listing may be followed by a page of another.
        """
        if transaction_type is None:
            page = await self.store.query(
                keys.USERS,
                keys.user_pk(username),
                sk=SortKey.prefix(keys.TXN_PREFIX),
                limit=limit,
                cursor=cursor,
                descending=True,
            )
        else:
            wanted = transaction_type.value
            page = await self.store.query(
                keys.USERS,
                keys.ledger_type_index_pk(username, wanted),
                index=keys.LEDGER_TYPE_INDEX,
                limit=limit,
                cursor=None if cursor is None else _index_cursor(username, wanted, cursor),
                descending=True,
            )
        return Page([entry_from_item(item) for item in page.items], page.next_cursor)

    async def get_transaction(self, username: str, transaction_id: str) -> BalanceTransaction | None:
        item = await self.store.get(keys.USERS, keys.ledger_key(username, transaction_id))
        return entry_from_item(item) if item is not None else None

    async def update_transaction_status(
        self, username: str, transaction_id: str, status: TransactionStatus, *, tx: Legs | None = None
    ) -> None:
        """Set a ledger entry's status (the entry must exist; leg `ledger` with `tx`)."""
        op = Update(
            keys.USERS, keys.ledger_key(username, transaction_id), set={"status": status.value}, condition=Exists()
        )
        if tx is not None:
            tx.add(Leg.LEDGER, op)
        else:
            await self.store.transact([op])


def _index_cursor(username: str, transaction_type: str, cursor: str) -> str:
    """`cursor` (a position in the user's ledger) as a position in the ledger index of one type."""
    last = decode_cursor(cursor)
    if last["pk"] != keys.user_pk(username):
        raise InvalidCursor("cursor of another partition")
    position = {"pk": last["pk"], "sk": last["sk"]}
    return encode_cursor({**position, **keys.ledger_type_index(username, transaction_type, last["sk"])})
