"""The physical tables: one per logical table, key `pk`/`sk` (strings), the GSIs of `keys.INDEXES`
(all attributes projected), TTL on `expires_at`; created by `cnop db init`."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cnop.common.database import keys
from cnop.common.database.store import TTL_ATTRIBUTE
from cnop.common.exceptions import StoreError

log = logging.getLogger(__name__)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def table_spec(name: str) -> dict[str, Any]:
    """The `CreateTable` request of the physical table `name` (every logical table has one shape)."""
    definitions = {"pk": "S", "sk": "S"}
    indexes = []
    for spec in keys.INDEXES.values():
        definitions[spec.pk_attr] = "S"
        definitions[spec.sk_attr] = spec.sk_type
        indexes.append(
            {
                "IndexName": spec.name,
                "KeySchema": [
                    {"AttributeName": spec.pk_attr, "KeyType": "HASH"},
                    {"AttributeName": spec.sk_attr, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        )
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": n, "AttributeType": t} for n, t in definitions.items()],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": indexes,
    }


async def create_table(client: Any, name: str, wait_seconds: float) -> None:
    """Create the table `name` unless it exists, wait until it and its indexes are ACTIVE, enable TTL."""
    try:
        await client.create_table(**table_spec(name))
    except ClientError as exc:
        if error_code(exc) != "ResourceInUseException":
            raise StoreError(f"dynamodb create_table {name}: {exc}") from exc
    except BotoCoreError as exc:
        raise StoreError(f"dynamodb create_table {name}: {exc}") from exc
    await wait_active(client, name, wait_seconds)
    await enable_ttl(client, name)


async def wait_active(client: Any, name: str, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while True:
        try:
            table = (await client.describe_table(TableName=name))["Table"]
        except ClientError as exc:
            raise StoreError(f"dynamodb describe_table: {error_code(exc)}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"dynamodb describe_table: {exc}") from exc
        indexes = table.get("GlobalSecondaryIndexes", [])
        if table["TableStatus"] == "ACTIVE" and all(i.get("IndexStatus") == "ACTIVE" for i in indexes):
            return
        if time.monotonic() > deadline:
            raise StoreError(f"dynamodb table {name} is not ACTIVE after {wait_seconds:.0f} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def enable_ttl(client: Any, name: str) -> None:
    try:
        described = await client.describe_time_to_live(TableName=name)
        current = described.get("TimeToLiveDescription", {})
        if current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
            return
        await client.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
        )
    except ClientError as exc:
        # DynamoDB Local may not implement TTL; reads filter expired items either way.
        log.warning("dynamodb: cannot enable TTL on %s: %s", name, exc)
