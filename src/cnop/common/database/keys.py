"""The single-table map: every table, index and key pattern, in one place (drawn as a table in
docs/storage.md §1; change both together)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# Logical tables, one per service.
USERS = "users"
ORDERS = "orders"
INVENTORY = "inventory"
TABLES = (USERS, ORDERS, INVENTORY)


@dataclass(frozen=True, slots=True)
class IndexSpec:
    name: str
    pk_attr: str
    sk_attr: str
    sk_type: Literal["S", "N"]


GSI1 = IndexSpec("gsi1", "gsi1pk", "gsi1sk", "S")
GSI2 = IndexSpec("gsi2", "gsi2pk", "gsi2sk", "N")
GSI3 = IndexSpec("gsi3", "gsi3pk", "gsi3sk", "N")
INDEXES = {GSI1.name: GSI1, GSI2.name: GSI2, GSI3.name: GSI3}


def key(pk: str, sk: str) -> dict[str, str]:
    return {"pk": pk, "sk": sk}


# --- users table ------------------------------------------------------------------------------

PROFILE = "PROFILE"
BALANCE_USD = "BALANCE#USD"
TXN_PREFIX = "TXN#"
HOLDING_PREFIX = "HOLDING#"


def user_pk(username: str) -> str:
    return f"USER#{username}"


def user_key(username: str) -> dict[str, str]:
    return key(user_pk(username), PROFILE)


def is_profile(item: Mapping[str, Any]) -> bool:
    """True for a user's profile item (among others read with it, e.g. by `batch_get`)."""
    return item.get("sk") == PROFILE


def sort_key_of(key_or_item: Mapping[str, Any]) -> Any:
    """The sort key of a key (or an item, or a decoded cursor); KeyError when it has none."""
    return key_or_item["sk"]


def email_key(email: str) -> dict[str, str]:
    return key(f"EMAIL#{email}", "EMAIL")


def balance_key(username: str) -> dict[str, str]:
    return key(user_pk(username), BALANCE_USD)


def ledger_sk(transaction_id: str) -> str:
    return f"{TXN_PREFIX}{transaction_id}"


def ledger_key(username: str, transaction_id: str) -> dict[str, str]:
    return key(user_pk(username), ledger_sk(transaction_id))


# The ledger by type (GSI1 on the users table): every entry is also filed under one index
# partition per (user, entry type), sorted by the entry's own sort key, so a listing filtered by
# type is a key range there, newest first as the ledger itself, however many entries of other
# types the user has. A type never contains "#", so the last segment is the type.
LEDGER_TYPE_INDEX = GSI1.name


def ledger_type_index_pk(username: str, transaction_type: str) -> str:
    return f"LEDGER#{username}#{transaction_type}"


def ledger_type_index(username: str, transaction_type: str, sk: str) -> dict[str, str]:
    """The index attributes of the ledger entry with sort key `sk` (written with the entry)."""
    return {GSI1.pk_attr: ledger_type_index_pk(username, transaction_type), GSI1.sk_attr: sk}


def daily_limit_key(username: str, kind: str, day: str) -> dict[str, str]:
    return key(user_pk(username), f"LIMIT#{kind}#{day}")


def holding_sk(asset_id: str) -> str:
    return f"{HOLDING_PREFIX}{asset_id}"


def holding_key(username: str, asset_id: str) -> dict[str, str]:
    return key(user_pk(username), holding_sk(asset_id))


# A user's cash balance and holdings are neighbours in sort order: nothing else of a user sorts
# between them (APIKEYS < BALANCE#USD < HOLDING#... < IDEM#... < LIMIT#... < PROFILE < TXN#...),
# so one key range (inclusive) reads both, and a portfolio is one query. `$` follows `#`.
BALANCE_AND_HOLDINGS = (BALANCE_USD, "HOLDING$")


def revoked_token_key(jti: str) -> dict[str, str]:
    return key(f"TOKEN#{jti}", "REVOKED")


IDEMPOTENCY_PREFIX = "IDEM#"


def idempotency_key(username: str, scope: str, client_key: str) -> dict[str, str]:
    return key(user_pk(username), f"{IDEMPOTENCY_PREFIX}{scope}#{client_key}")


def idempotency_scope_and_key(key_or_item: Mapping[str, Any]) -> tuple[str, str]:
    """The (scope, client key) an idempotency record's key was made of (a scope has no `#`)."""
    scope, _, client_key = str(sort_key_of(key_or_item)).removeprefix(IDEMPOTENCY_PREFIX).partition("#")
    return scope, client_key


def api_key_key(key_id: str) -> dict[str, str]:
    """An API key, found by its id alone (the id arrives with every bot request)."""
    return key(f"APIKEY#{key_id}", "KEY")


def api_keys_index_pk(username: str) -> str:
    """GSI1 partition on the users table listing one user's API keys (sort key: the key id)."""
    return f"APIKEYS#{username}"


def api_key_count_key(username: str) -> dict[str, str]:
    """The count of a user's live API keys, guarded by the per-user cap."""
    return key(user_pk(username), "APIKEYS")


# Users index (GSI1 on the users table): every profile, for the audit and admin listings.
USERS_INDEX_PK = "USERS"
USERS_INDEX = GSI1.name

# --- orders table -----------------------------------------------------------------------------

ORDER_PREFIX = "ORDER#"
ASSET_TXN_PREFIX = "ASSETTXN#"


def order_sk(order_id: str) -> str:
    return f"{ORDER_PREFIX}{order_id}"


def order_key(username: str, order_id: str) -> dict[str, str]:
    return key(user_pk(username), order_sk(order_id))


def asset_txn_prefix(asset_id: str) -> str:
    return f"{ASSET_TXN_PREFIX}{asset_id}#"


def asset_txn_key(username: str, asset_id: str, txn_id: str) -> dict[str, str]:
    return key(user_pk(username), f"{asset_txn_prefix(asset_id)}{txn_id}")


def trigger_pk(asset_id: str, direction: str) -> str:
    """GSI2 partition of resting orders: `direction` is `above` or `below` the trigger price."""
    return f"TRIGGER#{asset_id}#{direction}"


def trail_pk(asset_id: str, side: str) -> str:
    """GSI3 partition of trailing stops, keyed by the price extreme they have seen so far."""
    return f"TRAIL#{asset_id}#{side}"


# GSI1 on the orders table: resting orders with an expiry time, by that time.
EXPIRY_INDEX_PK = "EXPIRY"

# --- inventory table --------------------------------------------------------------------------

ASSETS_INDEX_PK = "ASSETS"
ASSETS_INDEX = GSI1.name


def asset_key(asset_id: str) -> dict[str, str]:
    return key(f"ASSET#{asset_id}", "META")


def house_inventory_key(asset_id: str) -> dict[str, str]:
    """The house header of an asset: the units that exist and its shard count (before migration
    0002-house-shards, the single house item itself)."""
    return key(f"ASSET#{asset_id}", "INVENTORY")


def house_shard_key(asset_id: str, shard: int) -> dict[str, str]:
    """One of an asset's house-inventory shards, each its own partition (decision 0025)."""
    return key(f"HOUSE#{asset_id}#{shard:02d}", "SHARD")


def migration_key(name: str) -> dict[str, str]:
    """The record that a migration (`cnop db migrate`) was applied to this store."""
    return key("MIGRATION", name)


# Price history for charts: one partition of ring-buffer slots per (asset, resolution), so the
# kept history is bounded by construction (a slot is overwritten when its time comes round).
PRICE_HISTORY_PK = "PRICES"


def price_point_key(asset_id: str, resolution_seconds: int, slot: int) -> dict[str, str]:
    return key(PRICE_HISTORY_PK, f"{asset_id}#{resolution_seconds}#{slot:05d}")
