"""Shared fixtures: every store-touching test runs on each engine in `ENGINES`.

`CNOP_TEST_ENGINES` picks engines (default: sqlite and dynamodb). The DynamoDB engine runs
against AWS's DynamoDB Local, which the session starts on 127.0.0.1 and stops at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cnop.common.database.store import ItemStore

if TYPE_CHECKING:
    from tests.support.redis_server import RedisServer

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


# Redis (tests/support/redis_server.py): one empty redis-server per pytest process (each xdist
# worker has its own), on a free 127.0.0.1 port. Tests sharing it keep apart by key prefix
# (`redis_prefix`); a test that stops Redis takes its own server (`restartable_redis`).


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's redis-server; never stop it in a test (use `restartable_redis`)."""
    from tests.support.redis_server import RedisServer

    with RedisServer.start() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """`redis://127.0.0.1:PORT/0` of the session's redis-server."""
    return redis_server.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of the test's own (`CNOP_REDIS_PREFIX`), so tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def restartable_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, to `stop()` and `restart()` (same port) in outage tests."""
    from tests.support.redis_server import RedisServer

    with RedisServer.start() as server:
        yield server
