"""ApiKeyDAO on every engine: keys by id, per-user listing, the per-user cap, deletion."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from cnop.common.clock import FakeClock
from cnop.common.dao.api_key_dao import ApiKeyDAO
from cnop.common.database import keys
from cnop.common.database.store import ItemStore
from cnop.common.entities.api_key import ApiKey, ApiKeyScope
from cnop.common.exceptions import ApiKeyLimitReached, ApiKeyNotFound
from cnop.common.ids import new_id

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def make_key(username: str = "alice_01", **fields: object) -> ApiKey:
    values: dict[str, object] = {
        "key_id": "CK" + new_id(),
        "username": username,
        "label": "bot",
        "scopes": frozenset({ApiKeyScope.READ}),
        "secret_hash": "ab" * 32,
        "generation": 0,
        "created_at": NOW,
    }
    values.update(fields)
    return ApiKey.model_validate(values)


@pytest.fixture
def dao(store: ItemStore) -> ApiKeyDAO:
    return ApiKeyDAO(store, FakeClock(NOW))


async def test_a_key_round_trips_by_id_exactly(dao: ApiKeyDAO) -> None:
    key = make_key(
        scopes=frozenset({ApiKeyScope.READ, ApiKeyScope.TRADE}),
        generation=3,
        expires_at=NOW + timedelta(days=30),
    )
    await dao.create_api_key(key, cap=10)
    assert await dao.get_api_key(key.key_id) == key
    assert await dao.get_api_key("CK" + new_id()) is None
    assert await dao.live_count("alice_01") == 1


async def test_listing_shows_only_the_users_keys_oldest_first(dao: ApiKeyDAO) -> None:
    first, second = make_key(), make_key()
    other = make_key("bob_0001")
    for key in (first, second, other):
        await dao.create_api_key(key, cap=10)
    assert [k.key_id for k in await dao.get_api_keys_by_user("alice_01")] == [first.key_id, second.key_id]
    assert [k.key_id for k in await dao.get_api_keys_by_user("bob_0001")] == [other.key_id]
    assert await dao.get_api_keys_by_user("nobody_1") == []


async def test_the_cap_refuses_one_key_too_many_and_stores_nothing(dao: ApiKeyDAO, store: ItemStore) -> None:
    for _ in range(3):
        await dao.create_api_key(make_key(), cap=3)
    extra = make_key()
    with pytest.raises(ApiKeyLimitReached):
        await dao.create_api_key(extra, cap=3)
    assert await dao.get_api_key(extra.key_id) is None
    assert await dao.live_count("alice_01") == 3
    assert len(await dao.get_api_keys_by_user("alice_01")) == 3
    counter = await store.get(keys.USERS, keys.api_key_count_key("alice_01"))
    assert counter is not None and counter["live"] == Decimal(3)


async def test_two_creations_racing_for_the_last_slot_cannot_both_win(dao: ApiKeyDAO) -> None:
    await dao.create_api_key(make_key(), cap=2)
    racers = [make_key() for _ in range(6)]
    results = await asyncio.gather(*(dao.create_api_key(key, cap=2) for key in racers), return_exceptions=True)
    assert sum(1 for r in results if isinstance(r, ApiKey)) == 1
    assert all(isinstance(r, ApiKey | ApiKeyLimitReached) for r in results)
    assert await dao.live_count("alice_01") == 2
    assert len(await dao.get_api_keys_by_user("alice_01")) == 2


async def test_purging_dead_keys_makes_room_in_the_same_transaction(dao: ApiKeyDAO) -> None:
    old = [make_key(expires_at=NOW - timedelta(days=1)), make_key()]
    for key in old:
        await dao.create_api_key(key, cap=2)
    fresh = make_key()
    await dao.create_api_key(fresh, cap=2, purge=[old[0]])
    assert await dao.get_api_key(old[0].key_id) is None
    assert [k.key_id for k in await dao.get_api_keys_by_user("alice_01")] == [old[1].key_id, fresh.key_id]
    assert await dao.live_count("alice_01") == 2


async def test_delete_takes_the_key_and_its_slot_and_never_another_users(dao: ApiKeyDAO) -> None:
    mine, theirs = make_key(), make_key("bob_0001")
    await dao.create_api_key(mine, cap=10)
    await dao.create_api_key(theirs, cap=10)
    with pytest.raises(ApiKeyNotFound):
        await dao.delete_api_key("alice_01", theirs.key_id)
    assert await dao.get_api_key(theirs.key_id) == theirs
    assert await dao.live_count("bob_0001") == 1
    await dao.delete_api_key("alice_01", mine.key_id)
    assert await dao.get_api_key(mine.key_id) is None
    assert await dao.live_count("alice_01") == 0
    with pytest.raises(ApiKeyNotFound):
        await dao.delete_api_key("alice_01", mine.key_id)
    assert await dao.live_count("alice_01") == 0


async def test_recording_a_use_notes_time_and_address_but_never_revives_a_deleted_key(dao: ApiKeyDAO) -> None:
    key = make_key()
    await dao.create_api_key(key, cap=10)
    later = NOW + timedelta(minutes=5)
    await dao.record_use(key, later, "127.0.0.9")
    used = await dao.get_api_key(key.key_id)
    assert used is not None
    assert used.last_used_at == later and used.last_used_ip == "127.0.0.9" and used.known_ips == ("127.0.0.9",)
    await dao.delete_api_key("alice_01", key.key_id)
    await dao.record_use(used, later, "127.0.0.10")
    assert await dao.get_api_key(key.key_id) is None
