"""The SQLite engine's durability setting: NORMAL by default, FULL or EXTRA when configured."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cnop.common.config import Settings
from cnop.common.database.factory import open_store
from cnop.common.database.sqlite import SQLiteStore


async def pragma(store: SQLiteStore) -> tuple[int, str]:
    await store.ping()
    conn = store._connection()
    return conn.execute("PRAGMA synchronous").fetchone()[0], conn.execute("PRAGMA journal_mode").fetchone()[0]


@pytest.mark.parametrize(("mode", "level"), [(None, 1), ("NORMAL", 1), ("FULL", 2), ("EXTRA", 3)])
async def test_the_configured_synchronous_mode_is_what_the_connection_uses(
    tmp_path: Path, mode: str | None, level: int
) -> None:
    settings = Settings() if mode is None else Settings(sqlite_synchronous=mode)
    store = open_store(f"sqlite:///{tmp_path}/d.db", settings)
    assert isinstance(store, SQLiteStore)
    try:
        assert await pragma(store) == (level, "wal")
    finally:
        await store.close()


def test_an_unsafe_or_unknown_mode_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(sqlite_synchronous="OFF")
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(":memory:", synchronous="SOMETIMES")


def test_group_commit_is_on_unless_configured_off(tmp_path: Path) -> None:
    default = open_store(f"sqlite:///{tmp_path}/a.db", Settings())
    off = open_store(f"sqlite:///{tmp_path}/b.db", Settings(sqlite_group_commit=False))
    assert isinstance(default, SQLiteStore) and default.group_commit is True
    assert isinstance(off, SQLiteStore) and off.group_commit is False


def test_inline_reads_are_on_unless_configured_off_and_never_in_memory(tmp_path: Path) -> None:
    default = open_store(f"sqlite:///{tmp_path}/a.db", Settings())
    off = open_store(f"sqlite:///{tmp_path}/b.db", Settings(sqlite_inline_reads=False))
    memory = open_store("sqlite://:memory:", Settings())
    assert isinstance(default, SQLiteStore) and default.inline_reads is True
    assert isinstance(off, SQLiteStore) and off.inline_reads is False
    assert isinstance(memory, SQLiteStore) and memory.inline_reads is False
