"""PasswordManager: strength rules, Argon2id hashing, legacy bcrypt, the bounded pool, equal timing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import bcrypt
import pytest
from pwdlib.hashers.argon2 import Argon2Hasher

from cnop.common.config import Settings
from cnop.common.exceptions import WeakPassword
from cnop.common.security import PasswordManager
from cnop.common.security.password_manager import (
    HASH_THREAD_NAME_PREFIX,
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    SPECIAL_CHARACTERS,
    TEST_ARGON2_PARAMS,
    Argon2Params,
)

STRONG = "Correct-Horse-42"


def _settings(workers: int = 2) -> Settings:
    return Settings(_env_file=None, password_hash_workers=workers)


@pytest.fixture
def manager() -> Iterator[PasswordManager]:
    pm = PasswordManager(_settings(), argon2_params=TEST_ARGON2_PARAMS)
    yield pm
    pm.close()


def _password_of_length(length: int) -> str:
    return ("Aa1!" + "x" * length)[:length]


def _weak_detail(manager: PasswordManager, password: str) -> str:
    with pytest.raises(WeakPassword) as caught:
        manager.validate_password_strength(password)
    return caught.value.detail


# --- strength rules ----------------------------------------------------------------------------


def test_a_password_meeting_every_rule_is_accepted(manager: PasswordManager) -> None:
    manager.validate_password_strength(STRONG)


@pytest.mark.parametrize(
    ("password", "missing"),
    [
        ("correct-horse-42", "upper-case letter"),
        ("CORRECT-HORSE-42", "lower-case letter"),
        ("Correct-Horse-xy", "digit"),
        ("CorrectHorse42xy", "contain one of"),
    ],
)
def test_a_password_missing_one_class_is_refused_naming_only_that_class(
    manager: PasswordManager, password: str, missing: str
) -> None:
    detail = _weak_detail(manager, password)
    assert missing in detail
    all_rules = ["upper-case letter", "lower-case letter", "digit", "contain one of", "characters long"]
    assert [rule for rule in all_rules if rule in detail] == [missing]


def test_an_empty_password_is_refused_naming_every_rule(manager: PasswordManager) -> None:
    detail = _weak_detail(manager, "")
    for rule in ("at least 12 characters", "upper-case letter", "lower-case letter", "digit", "one of"):
        assert rule in detail
    assert SPECIAL_CHARACTERS in detail


@pytest.mark.parametrize("length", [MIN_PASSWORD_LENGTH, MAX_PASSWORD_LENGTH])
def test_passwords_at_the_length_bounds_are_accepted(manager: PasswordManager, length: int) -> None:
    password = _password_of_length(length)
    assert len(password) == length
    manager.validate_password_strength(password)


@pytest.mark.parametrize(
    ("length", "message"),
    [
        (MIN_PASSWORD_LENGTH - 1, "at least 12 characters"),
        (MAX_PASSWORD_LENGTH + 1, "at most 128 characters"),
    ],
)
def test_passwords_just_outside_the_length_bounds_are_refused(
    manager: PasswordManager, length: int, message: str
) -> None:
    password = _password_of_length(length)
    assert len(password) == length
    assert message in _weak_detail(manager, password)


@pytest.mark.parametrize("special", list(SPECIAL_CHARACTERS))
def test_each_listed_special_character_counts(manager: PasswordManager, special: str) -> None:
    manager.validate_password_strength(f"CorrectHorse42{special}")


@pytest.mark.parametrize("other", [" ", "<", ">", "|", "\\", "'", '"', "`", "€"])
def test_characters_outside_the_special_list_do_not_count_as_special(
    manager: PasswordManager, other: str
) -> None:
    assert "contain one of" in _weak_detail(manager, f"CorrectHorse42{other}")


def test_length_counts_characters_not_bytes(manager: PasswordManager) -> None:
    manager.validate_password_strength("Ää1!ööööööüü")  # 12 characters, 22 bytes in UTF-8


def test_an_unencodable_password_is_refused(manager: PasswordManager) -> None:
    assert "valid Unicode" in _weak_detail(manager, "Correct-Horse-42\ud800")


def test_spaces_and_unicode_are_kept_exactly(manager: PasswordManager) -> None:
    password = "  Pässwörd 42! ünïcode  "
    manager.validate_password_strength(password)
    hashed = manager.hash_password(password)
    assert manager.verify_password(password, hashed)
    assert not manager.verify_password(password.strip(), hashed)
    assert not manager.verify_password("  Passwörd 42! ünïcode  ", hashed)


# --- hashing and verifying ---------------------------------------------------------------------


def test_argon2id_round_trip(manager: PasswordManager) -> None:
    hashed = manager.hash_password(STRONG)
    assert hashed.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert STRONG not in hashed
    assert manager.verify_password(STRONG, hashed)
    assert not manager.verify_password(STRONG + "x", hashed)


def test_the_same_password_hashes_differently_each_time(manager: PasswordManager) -> None:
    first, second = manager.hash_password(STRONG), manager.hash_password(STRONG)
    assert first != second
    assert manager.verify_password(STRONG, first)
    assert manager.verify_password(STRONG, second)


def test_a_current_hash_needs_no_update(manager: PasswordManager) -> None:
    assert manager.verify_and_update(STRONG, manager.hash_password(STRONG)) == (True, None)


def test_a_wrong_password_gives_no_update(manager: PasswordManager) -> None:
    assert manager.verify_and_update("Wrong-Horse-42", manager.hash_password(STRONG)) == (False, None)


def test_a_legacy_bcrypt_hash_verifies_and_is_upgraded_to_argon2id(manager: PasswordManager) -> None:
    legacy = bcrypt.hashpw(STRONG.encode(), bcrypt.gensalt(rounds=4)).decode()
    assert manager.verify_password(STRONG, legacy)
    assert not manager.verify_password("Wrong-Horse-42", legacy)

    valid, upgraded = manager.verify_and_update(STRONG, legacy)
    assert valid
    assert upgraded is not None
    assert upgraded.startswith("$argon2id$")
    assert manager.verify_and_update(STRONG, upgraded) == (True, None)
    assert manager.verify_and_update("Wrong-Horse-42", legacy) == (False, None)


def test_a_legacy_2a_bcrypt_hash_verifies(manager: PasswordManager) -> None:
    legacy = bcrypt.hashpw(STRONG.encode(), bcrypt.gensalt(rounds=4, prefix=b"2a")).decode()
    assert manager.verify_password(STRONG, legacy)


def test_a_legacy_bcrypt_hash_of_a_long_password_verifies_as_old_bcrypt_did(manager: PasswordManager) -> None:
    password = "Ä" * 40 + "Correct-Horse-42"  # 96 bytes; bcrypt < 5 hashed only the first 72
    legacy = bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(rounds=4)).decode()
    valid, upgraded = manager.verify_and_update(password, legacy)
    assert valid
    assert upgraded is not None
    assert manager.verify_password(password, upgraded)


def test_a_hash_made_with_other_argon2_parameters_is_upgraded(manager: PasswordManager) -> None:
    older = Argon2Hasher(time_cost=2, memory_cost=2048, parallelism=1).hash(STRONG)
    valid, upgraded = manager.verify_and_update(STRONG, older)
    assert valid
    assert upgraded is not None
    assert upgraded.startswith("$argon2id$v=19$m=1024,t=1,p=1$")


@pytest.mark.parametrize(
    "stored",
    ["", "plaintext", "$argon2id$garbage", "$2b$04$" + "!" * 53, "$1$md5crypt$abcdefghijklmnop"],
)
def test_an_unreadable_stored_hash_never_verifies(manager: PasswordManager, stored: str) -> None:
    assert not manager.verify_password(STRONG, stored)
    assert manager.verify_and_update(STRONG, stored) == (False, None)


def test_an_unencodable_password_never_verifies(manager: PasswordManager) -> None:
    hashed = manager.hash_password(STRONG)
    assert not manager.verify_password("Correct-Horse-42\ud800", hashed)


def test_dummy_verification_always_fails(manager: PasswordManager) -> None:
    assert manager.dummy_verify(STRONG) is False


def test_the_default_parameters_are_the_documented_ones() -> None:
    pm = PasswordManager(_settings(workers=1))
    try:
        default = Argon2Params()
        prefix = f"$argon2id$v=19$m={default.memory_cost},t={default.time_cost},p={default.parallelism}$"
        assert pm.hash_password(STRONG).startswith(prefix)
    finally:
        pm.close()


# --- async: off the loop, bounded ----------------------------------------------------------------


async def test_async_methods_give_the_same_answers(manager: PasswordManager) -> None:
    hashed = await manager.hash_password_async(STRONG)
    assert await manager.verify_password_async(STRONG, hashed)
    assert not await manager.verify_password_async("Wrong-Horse-42", hashed)
    assert await manager.verify_and_update_async(STRONG, hashed) == (True, None)
    legacy = bcrypt.hashpw(STRONG.encode(), bcrypt.gensalt(rounds=4)).decode()
    valid, upgraded = await manager.verify_and_update_async(STRONG, legacy)
    assert valid
    assert upgraded is not None
    assert await manager.dummy_verify_async(STRONG) is False


async def test_async_hashing_runs_in_the_hashing_pool_not_on_the_loop(
    manager: PasswordManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    original_hash = Argon2Hasher.hash

    def recording_hash(self: Argon2Hasher, password: str | bytes, *, salt: bytes | None = None) -> str:
        threads.append(threading.current_thread().name)
        return original_hash(self, password, salt=salt)

    def recording_verify(self: Argon2Hasher, password: str | bytes, hash: str | bytes) -> bool:
        threads.append(threading.current_thread().name)
        return True

    monkeypatch.setattr(Argon2Hasher, "hash", recording_hash)
    monkeypatch.setattr(Argon2Hasher, "verify", recording_verify)

    hashed = await manager.hash_password_async(STRONG)
    await manager.verify_password_async(STRONG, hashed)
    await manager.verify_and_update_async(STRONG, hashed)
    await manager.dummy_verify_async(STRONG)

    assert len(threads) == 4
    assert all(name.startswith(HASH_THREAD_NAME_PREFIX) for name in threads)
    assert threading.current_thread().name not in threads


async def test_the_event_loop_keeps_running_while_a_hash_is_computed(
    manager: PasswordManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def slow_hash(self: Argon2Hasher, password: str | bytes, *, salt: bytes | None = None) -> str:
        time.sleep(0.3)
        return "$argon2id$slow"

    monkeypatch.setattr(Argon2Hasher, "hash", slow_hash)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        assert await manager.hash_password_async(STRONG) == "$argon2id$slow"
    finally:
        ticking.cancel()
    assert ticks >= 5  # about 30 when the loop is free; 0 if the hash blocked it


@pytest.mark.parametrize("workers", [1, 2, 3])
async def test_concurrent_hashing_never_exceeds_the_worker_count(
    monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    pm = PasswordManager(_settings(workers=workers), argon2_params=TEST_ARGON2_PARAMS)
    lock = threading.Lock()
    running = 0
    peak = 0

    def counting_hash(self: Argon2Hasher, password: str | bytes, *, salt: bytes | None = None) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return "$argon2id$counted"

    monkeypatch.setattr(Argon2Hasher, "hash", counting_hash)
    try:
        results = await asyncio.gather(*(pm.hash_password_async(STRONG) for _ in range(3 * workers + 1)))
    finally:
        pm.close()
    assert results == ["$argon2id$counted"] * (3 * workers + 1)
    assert peak == workers


# --- an unknown user costs what a known one does -------------------------------------------------


def _cost_segment(argon2_hash: str) -> str:
    """The `$argon2id$v=..$m=..,t=..,p=..$` head of a hash: what decides how long a verify takes."""
    return "$".join(argon2_hash.split("$")[:4])


async def test_an_unknown_user_takes_as_long_as_a_known_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Equal cost is shown by what runs, not by a stopwatch: both paths run one Argon2id verify, in
    # the hashing pool, over a hash of the same algorithm and cost parameters.
    params = Argon2Params(time_cost=1, memory_cost=16 * 1024, parallelism=1)
    pm = PasswordManager(_settings(workers=1), argon2_params=params)
    verified: list[tuple[str, str]] = []
    real_verify = Argon2Hasher.verify

    def recording_verify(self: Argon2Hasher, password: str | bytes, hash: str | bytes) -> bool:
        text = hash.decode() if isinstance(hash, bytes) else hash
        verified.append((threading.current_thread().name, _cost_segment(text)))
        return real_verify(self, password, hash)

    try:
        stored = pm.hash_password(STRONG)
        monkeypatch.setattr(Argon2Hasher, "verify", recording_verify)
        assert await pm.verify_password_async("Wrong-Horse-42", stored) is False
        known = list(verified)
        verified.clear()
        assert await pm.dummy_verify_async("Wrong-Horse-42") is False
        unknown = list(verified)
    finally:
        pm.close()
    assert len(known) == 1 and len(unknown) == 1
    assert known[0][0].startswith(HASH_THREAD_NAME_PREFIX)
    assert unknown[0][0].startswith(HASH_THREAD_NAME_PREFIX)
    assert unknown[0][1] == known[0][1] == _cost_segment(stored)
    assert f"m={params.memory_cost},t={params.time_cost},p={params.parallelism}" in stored
