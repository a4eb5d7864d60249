"""The DAOs against the SQLite engine in a temp dir (no HTTP, no other engine)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cnop.common.clock import FakeClock
from cnop.common.database.sqlite import SQLiteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    engine = SQLiteStore(str(tmp_path / "store.db"))
    await engine.create_tables()
    yield engine
    await engine.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
