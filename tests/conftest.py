"""Shared fixtures: every store-touching test runs on each engine in `ENGINES`.

`CNOP_TEST_ENGINES` picks engines (default: sqlite and dynamodb). The DynamoDB engine runs
against AWS's DynamoDB Local, which the session starts on 127.0.0.1 and stops at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from cnop.common.database.store import ItemStore

ENGINES = [e.strip() for e in os.environ.get("CNOP_TEST_ENGINES", "sqlite,dynamodb").split(",") if e.strip()]

StoreFactory = Callable[[], ItemStore]


@pytest.fixture(scope="session")
def dynamodb_endpoint() -> Iterator[str]:
    from tests.support.dynamodb_local import DynamoDBLocal

    with DynamoDBLocal.start() as server:
        yield server.endpoint


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_factory(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> StoreFactory:
    """Makes stores that all see the same data (one file, or one table prefix)."""
    if engine == "sqlite":
        from cnop.common.database.sqlite import SQLiteStore

        path = str(tmp_path / "store.db")
        return lambda: SQLiteStore(path)
    if engine == "dynamodb":
        from cnop.common.database.dynamodb import DynamoDBStore

        endpoint = request.getfixturevalue("dynamodb_endpoint")
        prefix = f"t{uuid.uuid4().hex[:12]}"
        return lambda: DynamoDBStore.for_local(endpoint, table_prefix=prefix)
    raise ValueError(f"unknown engine {engine}")


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[ItemStore]:
    s = store_factory()
    await s.create_tables()
    yield s
    await s.close()
