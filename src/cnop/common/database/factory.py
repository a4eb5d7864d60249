"""Open the store a URL names: `sqlite:///path/file.db`, `sqlite://:memory:` or `dynamodb`."""

from __future__ import annotations

from cnop.common.config import Settings
from cnop.common.database.store import ItemStore


def open_store(url: str, settings: Settings | None = None) -> ItemStore:
    if url.startswith("sqlite://"):
        from cnop.common.database.sqlite import SQLiteStore

        path = url.removeprefix("sqlite://")
        path = path.removeprefix("/") if path.startswith("/:memory:") else path
        if path.startswith("/") and not path.startswith("//"):
            # sqlite:///relative/path -> "relative/path"; sqlite:////abs/path -> "/abs/path"
            path = path[1:]
        settings = settings or Settings()
        return SQLiteStore(
            path or ":memory:",
            synchronous=settings.sqlite_synchronous,
            group_commit=settings.sqlite_group_commit,
            inline_reads=settings.sqlite_inline_reads,
        )
    if url == "dynamodb" or url.startswith("dynamodb://"):
        from cnop.common.database.dynamodb import DynamoDBStore

        return DynamoDBStore.from_settings(settings or Settings())
    raise ValueError(f"unknown store {url!r}: use sqlite:///PATH or dynamodb")
