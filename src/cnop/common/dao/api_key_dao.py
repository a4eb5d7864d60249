"""ApiKeyDAO: API keys on the users table, found by key id, listed per user, capped per user.

Each key is one item under its own id (a bot request names only the key id); GSI1 lists a
user's keys. A counter item under the user holds the number of live keys: creating a key adds
one under the guard `live < cap`, deleting one takes one off, both in the same transaction as
the key itself, so two creations racing for the last slot cannot both win.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from cnop.common.clock import Clock, isoformat, parse_isoformat
from cnop.common.database import keys
from cnop.common.database.store import (
    AttrNotExists,
    Delete,
    Eq,
    Exists,
    Ge,
    Item,
    ItemStore,
    Le,
    NotExists,
    Op,
    Or,
    Put,
    Update,
    query_all,
)
from cnop.common.entities.api_key import ApiKey, ApiKeyScope
from cnop.common.exceptions import ApiKeyLimitReached, ApiKeyNotFound, ConditionFailed, StoreError

# How many client addresses a key remembers, to tell a use from a new address.
KNOWN_IPS = 8


def api_key_to_item(key: ApiKey) -> Item:
    return {
        **keys.api_key_key(key.key_id),
        keys.GSI1.pk_attr: keys.api_keys_index_pk(key.username),
        keys.GSI1.sk_attr: key.key_id,
        "key_id": key.key_id,
        "username": key.username,
        "label": key.label,
        "scopes": sorted(scope.value for scope in key.scopes),
        "secret_hash": key.secret_hash,
        "generation": Decimal(key.generation),
        "created_at": isoformat(key.created_at),
        # Not the store's TTL attribute: an expired key stays listed (and counted) until deleted.
        "good_till": isoformat(key.expires_at) if key.expires_at is not None else None,
        "last_used_at": isoformat(key.last_used_at) if key.last_used_at is not None else None,
        "last_used_ip": key.last_used_ip,
        "known_ips": list(key.known_ips),
    }


def api_key_from_item(item: Item) -> ApiKey:
    good_till = item.get("good_till")
    last_used = item.get("last_used_at")
    return ApiKey(
        key_id=item["key_id"],
        username=item["username"],
        label=item["label"],
        scopes=frozenset(ApiKeyScope(scope) for scope in item["scopes"]),
        secret_hash=item["secret_hash"],
        generation=int(item["generation"]),
        created_at=parse_isoformat(item["created_at"]),
        expires_at=parse_isoformat(good_till) if good_till else None,
        last_used_at=parse_isoformat(last_used) if last_used else None,
        last_used_ip=item.get("last_used_ip"),
        known_ips=tuple(item.get("known_ips") or ()),
    )


class ApiKeyDAO:
    def __init__(self, store: ItemStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def create_api_key(self, key: ApiKey, cap: int, purge: Sequence[ApiKey] = ()) -> ApiKey:
        """Store `key`, deleting `purge` (dead keys of the same user) in the same transaction.

        Refused with ApiKeyLimitReached when the user already has `cap` live keys after the purge.
        """
        purged = len(purge)
        ops: list[Op] = [
            Put(keys.USERS, api_key_to_item(key), NotExists()),  # 0
            Update(  # 1: the cap
                keys.USERS,
                keys.api_key_count_key(key.username),
                add={"live": Decimal(1 - purged)},
                condition=Or(AttrNotExists("live"), Le("live", Decimal(cap - 1 + purged))),
            ),
        ]
        ops += [Delete(keys.USERS, keys.api_key_key(old.key_id), Eq("username", key.username)) for old in purge]  # 2..
        try:
            await self.store.transact(ops)
        except ConditionFailed as exc:
            if exc.index == 1:
                raise ApiKeyLimitReached(f"A user may have at most {cap} API keys; delete one first") from exc
            raise StoreError(f"creating API key failed at op {exc.index}") from exc
        return key

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        item = await self.store.get(keys.USERS, keys.api_key_key(key_id))
        return api_key_from_item(item) if item is not None else None

    async def get_api_keys_by_user(self, username: str) -> list[ApiKey]:
        """The user's keys, oldest first (ids are time-sortable); a bounded set (the cap)."""
        pk = keys.api_keys_index_pk(username)
        return [api_key_from_item(item) async for item in query_all(self.store, keys.USERS, pk, index=keys.GSI1.name)]

    async def live_count(self, username: str) -> int:
        item = await self.store.get(keys.USERS, keys.api_key_count_key(username))
        return int(item["live"]) if item is not None and "live" in item else 0

    async def delete_api_key(self, username: str, key_id: str) -> None:
        """Delete one of the user's keys; another user's key id is simply not found."""
        try:
            await self.store.transact(
                [
                    Delete(keys.USERS, keys.api_key_key(key_id), Eq("username", username)),
                    Update(
                        keys.USERS,
                        keys.api_key_count_key(username),
                        add={"live": Decimal(-1)},
                        condition=Ge("live", Decimal(1)),
                    ),
                ]
            )
        except ConditionFailed as exc:
            if exc.index == 0:
                raise ApiKeyNotFound() from exc
            raise StoreError("the API key count is out of step") from exc

    async def record_use(self, key: ApiKey, at: datetime, ip: str | None) -> None:
        """Note when and from where the key was last used (refused if the key was deleted meanwhile)."""
        fields: Item = {"last_used_at": isoformat(at), "last_used_ip": ip}
        if ip is not None and ip not in key.known_ips:
            fields["known_ips"] = [*key.known_ips, ip][-KNOWN_IPS:]
        try:
            await self.store.transact(
                [Update(keys.USERS, keys.api_key_key(key.key_id), set=fields, condition=Exists())]
            )
        except ConditionFailed:
            return  # deleted meanwhile: nothing to note
