"""0001-ledger-type-index: every ledger entry filed under its type (decision 0026).

Before: a ledger entry (`USER#{name} / TXN#{id}`) carried no index attributes, and a listing
filtered by type read the user's whole ledger. After: it carries `keys.ledger_type_index` (GSI1
of the users table: one index partition per user and type). Every registered user's ledger is
read (users found on the users index, as the audit finds them) and each entry without the right
attributes gets them, by an `Update` guarded by `Exists`, up to 100 per transaction.
"""

from __future__ import annotations

from cnop.common.config import Settings
from cnop.common.database import keys
from cnop.common.database.store import Exists, ItemStore, Op, SortKey, Update, query_all

BATCH = 100  # updates per transaction (the store's limit)


async def run(store: ItemStore, settings: Settings) -> int:
    changed = 0
    users = [
        str(item["username"])
        async for item in query_all(store, keys.USERS, keys.USERS_INDEX_PK, index=keys.USERS_INDEX)
    ]
    for username in users:
        ops: list[Op] = []
        async for entry in query_all(store, keys.USERS, keys.user_pk(username), sk=SortKey.prefix(keys.TXN_PREFIX)):
            wanted = keys.ledger_type_index(username, entry["transaction_type"], entry["sk"])
            if any(entry.get(name) != value for name, value in wanted.items()):
                ops.append(Update(keys.USERS, {"pk": entry["pk"], "sk": entry["sk"]}, set=wanted, condition=Exists()))
            if len(ops) == BATCH:
                await store.transact(ops)
                changed, ops = changed + len(ops), []
        if ops:
            await store.transact(ops)
            changed += len(ops)
    return changed
