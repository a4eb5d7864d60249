"""The AWS engine: the storage port on Amazon DynamoDB (and DynamoDB Local in tests), via aiobotocore.

One physical table per logical table, named `{prefix}-{logical}` (`schema`). Every write is one
`TransactWriteItems` whose condition expressions are compiled from the typed conditions
(`expressions`), with the same meaning as `store.evaluate` (the reference semantics); items and
their exact Decimals are encoded by `codec`.

* An item whose `expires_at` has passed reads as absent, even before DynamoDB's TTL sweeper
  deletes it: reads filter it out, `NotExists` holds on it, comparisons on it are false. An
  `Update` of such an item starts from nothing, as on an absent item: the update carries a guard
  "absent or live"; if only that guard fails, the op is re-sent as a `Put` of the item the update
  leaves behind (guarded by "absent or expired").
* `TransactionConflict` cancellations and throttling are retried here with jittered exponential
  back-off and the same `ClientRequestToken`; only `ConditionalCheckFailed` is a business answer.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from cnop.common.config import Settings
from cnop.common.database import keys
from cnop.common.database.dynamodb import schema
from cnop.common.database.dynamodb.codec import AttributeValue, decode_item, encode_item, encode_key, serialize
from cnop.common.database.dynamodb.credentials import AssumeRole, StsClientFactory, role_credentials
from cnop.common.database.dynamodb.expressions import Assumption, Expression
from cnop.common.database.dynamodb.schema import error_code
from cnop.common.database.store import (
    TTL_ATTRIBUTE,
    And,
    Check,
    Condition,
    Delete,
    InvalidCursor,
    Item,
    ItemStore,
    Key,
    NotExists,
    Op,
    Page,
    Put,
    Query,
    Update,
    apply_update,
    check_condition,
    decode_cursor,
    is_live,
)
from cnop.common.exceptions import ConditionFailed, StoreError, TransactionConflict

_RETRYABLE_ERRORS = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
        "TransactionConflictException",
    }
)
_RETRYABLE_REASONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)
_CONDITION_FAILED = "ConditionalCheckFailed"
_MAX_MODE_ROUNDS = 4  # corrections of an Update's assumption (see `Assumption`) per transact call
_TOKEN_NAMESPACE = uuid.UUID("6f0c2b8e-6a34-4a8e-9a3c-5e3b1d2f7c10")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded, jittered ("full jitter") exponential back-off for conflicts and throttling."""

    max_attempts: int = 8
    base_delay: float = 0.02
    max_delay: float = 1.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


_shared_session: AioSession | None = None


def shared_session() -> AioSession:
    """One botocore session per process: it caches the service models, so a new store's client
    opens in milliseconds instead of a quarter of a second."""
    global _shared_session
    if _shared_session is None:
        _shared_session = get_session()
    return _shared_session


def _client_config(
    max_pool_connections: int = 64, connect_timeout: float = 5, parameter_validation: bool = False
) -> Any:
    """The client's settings. botocore's client-side parameter validation is off: the store
    builds every request itself, DynamoDB validates each one anyway (a malformed request is a
    `ValidationException`, a StoreError here), and walking every nested attribute value of a
    six-op transaction against the service model cost about a fifth of the client's CPU per
    call (decision 0026)."""
    return AioConfig(
        max_pool_connections=max_pool_connections,
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=connect_timeout,
        read_timeout=30,
        parameter_validation=parameter_validation,
    )


class DynamoDBStore(ItemStore):
    """`ItemStore` on DynamoDB. One aiobotocore client per store, opened in the running loop."""

    def __init__(
        self,
        table_prefix: str,
        *,
        session: AioSession | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        client: Any = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """`client` is an already open client (a stub in tests); the store then does not close it."""
        if not table_prefix:
            raise ValueError("a table prefix is required")
        self.table_prefix = table_prefix
        self._session = session if session is not None else shared_session()
        self._client_kwargs: dict[str, Any] = {"config": _client_config(), **(client_kwargs or {})}
        self._dynamodb: Any = client
        self._stack: AsyncExitStack | None = None
        self._lock = asyncio.Lock()
        self.retry = retry or RetryPolicy()
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @classmethod
    def for_local(cls, endpoint: str, table_prefix: str = "cnop") -> DynamoDBStore:
        """A store on DynamoDB Local (or any endpoint that takes dummy credentials).

        DynamoDB Local is one JVM on the same small machine: a burst of thousands of requests
        would open connections faster than it accepts them, so fewer connections are pooled
        (requests queue for one) and a connection may take longer to open.
        """
        return cls(
            table_prefix,
            client_kwargs={
                "config": _client_config(max_pool_connections=16, connect_timeout=30),
                "endpoint_url": endpoint,
                "region_name": "us-east-1",
                "aws_access_key_id": "local",
                "aws_secret_access_key": "local",
            },
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, sts_client: StsClientFactory | None = None) -> DynamoDBStore:
        """The store the settings describe. Region, credentials and endpoint come from the usual
        AWS chain (AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL_DYNAMODB, instance role, ...); with
        `aws_role_arn` set, the store works as that role, through STS."""
        # botocore itself reads only AWS_DEFAULT_REGION; AWS_REGION is what the other SDKs read.
        client_kwargs = {"region_name": os.environ["AWS_REGION"]} if os.environ.get("AWS_REGION") else {}
        if not settings.aws_role_arn:
            return cls(settings.dynamodb_table_prefix, client_kwargs=client_kwargs)
        session = get_session()  # its own: it holds the role's credentials
        if sts_client is None:
            base = shared_session()  # the default chain: whoever may assume the role

            def default_sts() -> AbstractAsyncContextManager[Any]:
                client: AbstractAsyncContextManager[Any] = base.create_client("sts", **client_kwargs)
                return client

            sts_client = default_sts
        fetch = AssumeRole(sts_client, settings.aws_role_arn, settings.aws_role_session_name)
        # The session hands these to every client it creates, instead of its own chain's.
        session._credentials = role_credentials(fetch)
        return cls(settings.dynamodb_table_prefix, session=session, client_kwargs=client_kwargs)

    # --- plumbing -----------------------------------------------------------------------------

    def table_name(self, table: str) -> str:
        if table not in keys.TABLES:
            raise ValueError(f"unknown table {table!r}")
        return f"{self.table_prefix}-{table}"

    async def _client(self) -> Any:
        if self._dynamodb is None:
            async with self._lock:
                if self._dynamodb is None:
                    stack = AsyncExitStack()
                    try:
                        client = await stack.enter_async_context(
                            self._session.create_client("dynamodb", **self._client_kwargs)
                        )
                    except (BotoCoreError, ClientError) as exc:
                        await stack.aclose()
                        raise StoreError(f"dynamodb: cannot open a client: {exc}") from exc
                    self._stack, self._dynamodb = stack, client
        return self._dynamodb

    async def _call(self, operation: str, **params: Any) -> Any:
        client = await self._client()
        try:
            return await getattr(client, operation)(**params)
        except ClientError as exc:
            raise StoreError(f"dynamodb {operation}: {error_code(exc)}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"dynamodb {operation}: {exc}") from exc

    # --- schema -------------------------------------------------------------------------------

    async def create_tables(self, *, wait_seconds: float = 300.0) -> None:
        """Create every table (its indexes and TTL too) unless it exists, and wait until ACTIVE."""
        client = await self._client()
        await asyncio.gather(
            *(schema.create_table(client, self.table_name(table), wait_seconds) for table in keys.TABLES)
        )

    # --- reads --------------------------------------------------------------------------------

    async def _get(self, table: str, key: Key, consistent: bool) -> Item | None:
        response = await self._call(
            "get_item", TableName=self.table_name(table), Key=encode_key(key), ConsistentRead=consistent
        )
        raw = response.get("Item")
        if raw is None:
            return None
        item = decode_item(raw)
        return item if is_live(item, time.time()) else None

    async def _batch_get(self, table: str, keys: list[Key]) -> list[Item]:
        name = self.table_name(table)
        unique = {(k["pk"], k["sk"]): encode_key(k) for k in keys}
        if not unique:
            return []
        request: dict[str, Any] = {name: {"Keys": list(unique.values()), "ConsistentRead": True}}
        found: list[Item] = []
        for attempt in range(self.retry.max_attempts):
            response = await self._call("batch_get_item", RequestItems=request)
            found += [decode_item(raw) for raw in response.get("Responses", {}).get(name, [])]
            request = response.get("UnprocessedKeys") or {}
            if not request:
                break
            await self._sleep(self.retry.delay(attempt))
        else:
            raise StoreError(f"dynamodb batch_get_item: keys still unprocessed after {self.retry.max_attempts} tries")
        now = time.time()
        return [item for item in found if is_live(item, now)]

    async def _query(self, query: Query) -> Page:
        cursor = query.cursor
        start = self._start_key(cursor, query) if cursor is not None else None
        now = time.time()
        expr = Expression(now)
        key_condition = f"{expr.name(query.pk_attr)} = {expr.value(query.pk)}"
        if query.sk is not None:
            key_condition += f" AND {expr.sort_key(query.sk_attr, query.sk, query.numeric)}"
        ttl = expr.name(TTL_ATTRIBUTE)
        params: dict[str, Any] = {
            "TableName": self.table_name(query.table),
            "KeyConditionExpression": key_condition,
            "FilterExpression": f"attribute_not_exists({ttl}) OR {ttl} > {expr.value(expr.now)}",
            "ScanIndexForward": not query.descending,
            "Limit": query.limit + 1,
            **expr.params(),
        }
        if query.index is None:
            params["ConsistentRead"] = query.consistent
        else:
            params["IndexName"] = query.index
        items: list[Item] = []
        while len(items) <= query.limit:
            if start is not None:
                params["ExclusiveStartKey"] = start
            try:
                response = await self._call("query", **params)
            except StoreError as exc:
                if cursor is not None and ("ExclusiveStartKey" in str(exc) or "starting key" in str(exc)):
                    raise InvalidCursor("invalid cursor") from exc
                raise
            items += [item for item in map(decode_item, response.get("Items", [])) if is_live(item, now)]
            start = response.get("LastEvaluatedKey")
            if start is None:
                break
        return query.page(items)

    @staticmethod
    def _start_key(cursor: str, query: Query) -> dict[str, AttributeValue]:
        last = decode_cursor(cursor)
        pk_attr, sk_attr = query.pk_attr, query.sk_attr
        start: dict[str, AttributeValue] = {"pk": {"S": last["pk"]}, "sk": {"S": last["sk"]}}
        if pk_attr != "pk":
            index_pk, index_sk = last.get(pk_attr), last.get(sk_attr)
            sk_ok = isinstance(index_sk, Decimal) if query.numeric else isinstance(index_sk, str)
            if not isinstance(index_pk, str) or not sk_ok:
                raise InvalidCursor("invalid cursor")
            start[pk_attr] = {"S": index_pk}
            start[sk_attr] = serialize(index_sk)
        if last[pk_attr] != query.pk:
            raise InvalidCursor("cursor of another partition")
        return start

    # --- writes -------------------------------------------------------------------------------

    def _transact_item(self, op: Op, assumption: Assumption, now: float) -> dict[str, Any]:
        """One entry of TransactItems; an Update's request depends on `assumption` (see there)."""
        expr = Expression(now)
        table = self.table_name(op.table)
        condition: str | None = None
        if isinstance(op, Update) and assumption.recreate:
            guard: Condition = NotExists() if op.condition is None else And(op.condition, NotExists())
            op = Put(op.table, apply_update(None, op), guard)
        if isinstance(op, Put):
            kind, body = "Put", {"TableName": table, "Item": encode_item(op.item)}
            condition = None if op.condition is None else expr.condition(op.condition)
        elif isinstance(op, Update):
            update = expr.update(op, assumption.present)
            kind, body = (
                "Update",
                {"TableName": table, "Key": encode_key(op.key), "UpdateExpression": update},
            )
            guards = [expr.absent_or_live(), *expr.init_guard(op, assumption.present)]
            if op.condition is not None:
                guards.append(expr.condition(op.condition))
            condition = " AND ".join(guards)
            # The item tells a failed assumption from a failed condition of the caller's.
            body["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        elif isinstance(op, Delete):
            kind, body = "Delete", {"TableName": table, "Key": encode_key(op.key)}
            condition = None if op.condition is None else expr.condition(op.condition)
        elif isinstance(op, Check):
            kind, body = "ConditionCheck", {"TableName": table, "Key": encode_key(op.key)}
            condition = expr.condition(op.condition)
        else:
            raise TypeError(f"not an op: {op!r}")
        if condition is not None:
            body["ConditionExpression"] = condition
        body.update(expr.params())
        return {kind: body}

    async def _transact(self, ops: list[Op], token: str | None) -> None:
        if token is None:
            token = str(uuid.uuid4())
        elif len(token) > 36:
            token = str(uuid.uuid5(_TOKEN_NAMESPACE, token))
        assumptions = [Assumption() for _ in ops]
        for round_ in range(_MAX_MODE_ROUNDS):
            now = time.time()
            items = [self._transact_item(op, assumptions[i], now) for i, op in enumerate(ops)]
            # A changed request needs its own token (DynamoDB refuses a token with new parameters).
            round_token = token if round_ == 0 else str(uuid.uuid5(_TOKEN_NAMESPACE, f"{token}#{round_}"))
            reasons = await self._send_transaction(items, round_token)
            if reasons is None:
                return
            self._diagnose(ops, reasons, assumptions, now)
        raise TransactionConflict("items kept changing under this transaction's assumptions")

    async def _send_transaction(self, items: list[dict[str, Any]], token: str) -> list[dict[str, Any]] | None:
        """Send until done (None) or a condition failed (the cancellation reasons)."""
        client = await self._client()
        last_error = ""
        for attempt in range(self.retry.max_attempts):
            if attempt:
                await self._sleep(self.retry.delay(attempt - 1))
            try:
                await client.transact_write_items(TransactItems=items, ClientRequestToken=token)
                return None
            except ClientError as exc:
                code = error_code(exc)
                if code == "TransactionCanceledException":
                    reasons: list[dict[str, Any]] = exc.response.get("CancellationReasons") or []
                    codes = [reason.get("Code", "None") for reason in reasons]
                    if _CONDITION_FAILED in codes:
                        return reasons
                    if not any(c in _RETRYABLE_REASONS for c in codes):
                        raise StoreError(f"dynamodb transaction cancelled: {codes}") from exc
                    last_error = f"cancelled: {codes}"
                elif code in _RETRYABLE_ERRORS:
                    last_error = code
                else:
                    raise StoreError(f"dynamodb transact_write_items: {code}: {exc}") from exc
            except BotoCoreError as exc:
                raise StoreError(f"dynamodb transact_write_items: {exc}") from exc
        raise TransactionConflict(f"transaction still conflicting after {self.retry.max_attempts} tries ({last_error})")

    @staticmethod
    def _diagnose(
        ops: Sequence[Op], reasons: Sequence[Mapping[str, Any]], assumptions: list[Assumption], now: float
    ) -> None:
        """Raise ConditionFailed for the first op whose own condition failed; otherwise correct
        the assumptions of the Updates whose guard failed (from the item DynamoDB returned)."""
        corrected = False
        for index, reason in enumerate(reasons):
            if reason.get("Code") != _CONDITION_FAILED:
                continue
            op = ops[index]
            if not isinstance(op, Update):
                raise ConditionFailed(index)
            current = decode_item(reason["Item"]) if "Item" in reason else None
            live = check_condition(index, op, current, now)
            assumption = Assumption.of(op, current, now)
            if assumption == assumptions[index]:
                raise ConditionFailed(index, item=live)  # DynamoDB said no; trust it
            assumptions[index] = assumption
            corrected = True
        if not corrected:
            raise StoreError("dynamodb transaction cancelled without a failing op")

    # --- life cycle ---------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._call("describe_table", TableName=self.table_name(keys.USERS))

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._dynamodb = self._stack, None, None
            await stack.aclose()
