"""The AWS engine: the storage port on Amazon DynamoDB (and DynamoDB Local in tests), via aiobotocore.

One physical table per logical table, named `{prefix}-{logical}`, key `pk`/`sk` (strings), the
GSIs of `keys.INDEXES` (all attributes projected), TTL on `expires_at`. Every write is one
`TransactWriteItems` whose condition expressions are compiled from the typed conditions, with the
same meaning as `store.evaluate` (the reference semantics):

* An item whose `expires_at` has passed reads as absent, even before DynamoDB's TTL sweeper
  deletes it: reads filter it out, `NotExists` holds on it, comparisons on it are false. An
  `Update` of such an item starts from nothing, as on an absent item: the update carries a guard
  "absent or live"; if only that guard fails, the op is re-sent as a `Put` of the item the update
  leaves behind (guarded by "absent or expired").
* DynamoDB keeps numbers exactly but drops their trailing zeros (`1000.10` reads as `1000.1`).
  The store promises Decimals back as written, so where a number's exponent differs from the
  trailing-zero-free form, the item carries a hidden marker attribute `__exp:{name}` (or
  `__exp+:{name}` for a positive exponent, `1E+2`) with it; markers are never returned. The marker
  of a number is a number set of exponents, so that a numeric `add` keeps it right with an `ADD`
  and without reading the item (a sum's exponent is the least of its terms').
* `TransactionConflict` cancellations and throttling are retried here with jittered exponential
  back-off and the same `ClientRequestToken`; only `ConditionalCheckFailed` is a business answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from decimal import Context, Decimal
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.credentials import AioDeferredRefreshableCredentials
from aiobotocore.session import AioSession, get_session
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from cnop.common.config import Settings
from cnop.common.database import keys
from cnop.common.database.store import (
    KEY_ATTRIBUTES,
    TTL_ATTRIBUTE,
    And,
    AttrExists,
    AttrNotExists,
    Check,
    Condition,
    Delete,
    Eq,
    Exists,
    Ge,
    Gt,
    InvalidCursor,
    Item,
    Key,
    Le,
    Lt,
    Ne,
    Not,
    NotExists,
    Op,
    Or,
    Page,
    Put,
    SortKey,
    Update,
    apply_update,
    check_ops,
    decode_cursor,
    encode_cursor,
    evaluate,
    is_live,
)
from cnop.common.exceptions import ConditionFailed, StoreError, TransactionConflict

log = logging.getLogger(__name__)

AttributeValue = dict[str, Any]

MARKER_PREFIX = "__exp"
"""Attribute names starting with this are reserved for the engine's number-exponent markers."""
_SCALE = "__exp:"  # NS: a number's exponent is the least of these and its own; S: a container's
_EXACT = "__exp+:"  # N: a number's exact, positive exponent (`1E+2`); any `add` drops it

_NO_ATTRIBUTE = MARKER_PREFIX  # a name no item ever carries: used for tautologies and no-op updates
_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()
_WIDE = Context(prec=200)  # normalise and re-scale numbers without rounding
_ONE = Decimal(1)

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


# --- numbers: exact Decimals, trailing zeros included --------------------------------------------


def _exponent(number: Decimal) -> int:
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int):
        raise TypeError("NaN and infinities are not stored")
    return exponent


def _canonical(number: Decimal) -> Decimal:
    """The number as it reads back whatever text DynamoDB returns: no trailing zeros, no E+n."""
    if not number:
        return Decimal(0)
    normal = number.normalize(_WIDE)
    if _exponent(normal) > 0:
        normal = normal.quantize(_ONE, context=_WIDE)
    return normal


def _rescale(number: Decimal, exponent: int) -> Decimal:
    rescaled = number.quantize(Decimal((0, (1,), exponent)), context=_WIDE)
    return rescaled if rescaled == number else number


def _is_number(value: Any) -> bool:
    return isinstance(value, int | Decimal) and not isinstance(value, bool)


def _numbers(value: Any) -> Iterator[Decimal]:
    """Every number inside `value`, in a fixed order (maps by sorted key, lists in order)."""
    if _is_number(value):
        yield Decimal(value)
    elif isinstance(value, dict):
        for name in sorted(value):
            yield from _numbers(value[name])
    elif isinstance(value, list | tuple):
        for inner in value:
            yield from _numbers(inner)


def _map_numbers(value: Any, fn: Callable[[Decimal], Decimal]) -> Any:
    """`value` with every number replaced by `fn(number)`, visiting them in `_numbers` order."""
    if _is_number(value):
        return fn(Decimal(value))
    if isinstance(value, dict):
        mapped = {name: _map_numbers(value[name], fn) for name in sorted(value)}
        return {name: mapped[name] for name in value}
    if isinstance(value, list | tuple):
        return [_map_numbers(inner, fn) for inner in value]
    return value


def _marker(value: Any) -> tuple[str, AttributeValue] | None:
    """The marker (kind, value) that restores the exponents of the numbers in `value`, if needed."""
    if _is_number(value):
        number = Decimal(value)
        exponent = _exponent(number)
        if exponent == _exponent(_canonical(number)):
            return None
        return (_EXACT, {"N": str(exponent)}) if exponent > 0 else (_SCALE, {"NS": [str(exponent)]})
    exponents = []
    needed = False
    for number in _numbers(value):
        exponent = _exponent(number)
        if exponent == _exponent(_canonical(number)):
            exponents.append("")
        else:
            exponents.append(str(exponent))
            needed = True
    return (_SCALE, {"S": ",".join(exponents)}) if needed else None


def _apply_marker(value: Any, marker: AttributeValue) -> Any:
    if "N" in marker and _is_number(value):
        return _rescale(Decimal(value), int(marker["N"]))
    if "NS" in marker and _is_number(value):
        number = Decimal(value)
        return _rescale(number, min([_exponent(number), *(int(e) for e in marker["NS"])]))
    if "S" in marker and not _is_number(value):
        exponents = marker["S"].split(",")
        if len(exponents) != sum(1 for _ in _numbers(value)):
            return value
        pending = iter(exponents)

        def restore(number: Decimal) -> Decimal:
            exponent = next(pending)
            return _rescale(number, int(exponent)) if exponent else number

        return _map_numbers(value, restore)
    return value


def serialize(value: Any) -> AttributeValue:
    """A Python value as a DynamoDB attribute value (floats, NaN and infinities refused)."""
    try:
        result: AttributeValue = _SERIALIZER.serialize(value)
    except ArithmeticError as exc:
        raise ValueError(f"number out of DynamoDB's range (38 digits): {value}") from exc
    return result


def _marker_names(attr: str) -> tuple[str, str]:
    return f"{_SCALE}{attr}", f"{_EXACT}{attr}"


def _marker_attr(name: str) -> str | None:
    """The attribute a marker attribute belongs to; None for an ordinary attribute."""
    for kind in (_SCALE, _EXACT):
        if name.startswith(kind):
            return name[len(kind) :]
    return None


def _check_name(attr: str) -> None:
    if attr.startswith(MARKER_PREFIX):
        raise ValueError(f"attribute names starting with {MARKER_PREFIX!r} are reserved")


def _is_index_key(attr: str) -> bool:
    return any(attr in (spec.pk_attr, spec.sk_attr) for spec in keys.INDEXES.values())


def encode_item(item: Item) -> dict[str, AttributeValue]:
    """An item as DynamoDB attributes, with exponent markers where trailing zeros need them.

    A None index-key attribute is left out (DynamoDB cannot index NULL): the item is simply not
    in that index, as with the SQLite engine.
    """
    encoded: dict[str, AttributeValue] = {}
    for name, value in item.items():
        _check_name(name)
        if value is None and _is_index_key(name):
            continue
        encoded[name] = serialize(value)
        marker = _marker(value)
        if marker is not None:
            kind, marker_value = marker
            encoded[f"{kind}{name}"] = marker_value
    return encoded


def decode_item(raw: Mapping[str, AttributeValue]) -> Item:
    """The item a DynamoDB response holds, numbers restored as written, markers dropped."""
    item: Item = {
        name: _map_numbers(_DESERIALIZER.deserialize(value), _canonical)
        for name, value in raw.items()
        if not name.startswith(MARKER_PREFIX)
    }
    for name, marker in raw.items():
        attr = _marker_attr(name)
        if attr is not None and attr in item:
            item[attr] = _apply_marker(item[attr], marker)
    return item


def _encode_key(key: Key) -> dict[str, AttributeValue]:
    for name in KEY_ATTRIBUTES:
        if not isinstance(key.get(name), str) or not key[name]:
            raise ValueError(f"key needs a non-empty string {name!r}")
    return {"pk": {"S": key["pk"]}, "sk": {"S": key["sk"]}}


# --- expressions -------------------------------------------------------------------------------


class Expression:
    """Placeholders for one request: every name is `#nN`, every value `:vN` (values deduplicated)."""

    def __init__(self, now: float | None = None) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, AttributeValue] = {}
        self._name_ids: dict[str, str] = {}
        self._value_ids: dict[str, str] = {}
        self.now = Decimal(repr(time.time() if now is None else now))

    def name(self, attr: str) -> str:
        placeholder = self._name_ids.get(attr)
        if placeholder is None:
            placeholder = self._name_ids[attr] = f"#n{len(self._name_ids)}"
            self.names[placeholder] = attr
        return placeholder

    def value(self, value: Any) -> str:
        return self.raw_value(serialize(value))

    def raw_value(self, value: AttributeValue) -> str:
        ident = json.dumps(value, sort_keys=True, default=repr)
        placeholder = self._value_ids.get(ident)
        if placeholder is None:
            placeholder = self._value_ids[ident] = f":v{len(self._value_ids)}"
            self.values[placeholder] = value
        return placeholder

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.names:
            params["ExpressionAttributeNames"] = dict(self.names)
        if self.values:
            params["ExpressionAttributeValues"] = dict(self.values)
        return params

    # --- conditions ---------------------------------------------------------------------------

    def _expired(self) -> str:
        return f"{self.name(TTL_ATTRIBUTE)} <= {self.value(self.now)}"

    def absent(self) -> str:
        """No item, or an expired one (`NotExists`)."""
        return f"(attribute_not_exists({self.name('pk')}) OR {self._expired()})"

    def absent_or_live(self) -> str:
        """Not an expired item still stored: the guard of an `Update` that keeps the item."""
        return f"(attribute_not_exists({self.name('pk')}) OR NOT ({self._expired()}))"

    def condition(self, condition: Condition) -> str:
        """A condition expression true exactly when `store.evaluate` is.

        A comparison or `attribute_exists` is already false on an absent item; `AND NOT expired`
        makes it false on an expired one too. `<>` is also true on a missing attribute or another
        type in DynamoDB, so it is guarded by `attribute_type`.
        """
        match condition:
            case Exists():
                return f"(attribute_exists({self.name('pk')}) AND NOT ({self._expired()}))"
            case NotExists():
                return self.absent()
            case AttrExists(attr):
                return f"(attribute_exists({self.name(attr)}) AND NOT ({self._expired()}))"
            case AttrNotExists(attr):
                return f"(attribute_not_exists({self.name(attr)}) OR {self._expired()})"
            case And(conditions):
                if not conditions:
                    return self._always(True)
                if len(conditions) == 1:  # DynamoDB refuses redundant parentheses
                    return self.condition(conditions[0])
                return "(" + " AND ".join(self.condition(c) for c in conditions) + ")"
            case Or(conditions):
                if not conditions:
                    return self._always(False)
                if len(conditions) == 1:
                    return self.condition(conditions[0])
                return "(" + " OR ".join(self.condition(c) for c in conditions) + ")"
            case Not(inner):
                return f"(NOT {self.condition(inner)})"
            case Eq() | Ne() | Lt() | Le() | Gt() | Ge():
                return self._comparison(condition)
        raise TypeError(f"not a condition: {condition!r}")

    def init_guard(self, op: Update, present: frozenset[str]) -> list[str]:
        """Conditions that the marked `init` attributes are present or missing, as assumed."""
        guards = []
        for attr, value in op.init.items():
            if _marker(value) is not None:
                test = "attribute_exists" if attr in present else "attribute_not_exists"
                guards.append(f"{test}({self.name(attr)})")
        return guards

    def _always(self, truth: bool) -> str:
        name = self.name(_NO_ATTRIBUTE)
        if truth:
            return f"(attribute_not_exists({name}) OR attribute_exists({name}))"
        return f"(attribute_not_exists({name}) AND attribute_exists({name}))"

    def _comparison(self, condition: Eq | Ne | Lt | Le | Gt | Ge) -> str:
        attr, value = condition.attr, condition.value
        operator = {Eq: "=", Ne: "<>", Lt: "<", Le: "<=", Gt: ">", Ge: ">="}[type(condition)]
        if operator not in ("=", "<>") and not (isinstance(value, str) or _is_number(value)):
            raise TypeError(f"{operator} compares numbers or strings, not {type(value).__name__}")
        serialized = serialize(value)
        name, placeholder = self.name(attr), self.raw_value(serialized)
        compare = f"{name} {operator} {placeholder}"
        if operator == "<>":
            (type_code,) = serialized
            compare = f"attribute_type({name}, {self.value(type_code)}) AND {compare}"
        return f"({compare} AND NOT ({self._expired()}))"

    # --- key conditions and updates -------------------------------------------------------------

    def sort_key(self, attr: str, sk: SortKey, numeric: bool) -> str:
        name = self.name(attr)
        if sk.op == "begins_with":
            if numeric:
                raise ValueError("begins_with needs a string sort key")
            return f"begins_with({name}, {self.value(sk.value)})"
        if sk.op == "between":
            return f"{name} BETWEEN {self.value(sk.value)} AND {self.value(sk.high)}"
        if sk.op in ("<", "<=", ">", ">="):
            return f"{name} {sk.op} {self.value(sk.value)}"
        raise ValueError(f"unknown sort-key operator {sk.op!r}")

    def update(self, op: Update, present: frozenset[str] = frozenset()) -> str:
        """`SET`/`REMOVE`/`ADD` clauses for `op`; a numeric add is `SET a = if_not_exists(a, 0) + v`.

        `init` is `SET a = if_not_exists(a, v)`, except for a value that needs an exponent marker:
        that one is set (with its marker) unless it is in `present`, under `init_guard`.
        """
        sets: list[str] = []
        removes: list[str] = []
        adds: list[str] = []
        for attr, value in op.set.items():
            _check_name(attr)
            if value is None and _is_index_key(attr):
                removes += [self.name(attr), *map(self.name, _marker_names(attr))]
                continue
            sets.append(f"{self.name(attr)} = {self.value(value)}")
            marker = _marker(value)
            for kind, name in zip((_SCALE, _EXACT), _marker_names(attr), strict=True):
                if marker is not None and marker[0] == kind:
                    sets.append(f"{self.name(name)} = {self.raw_value(marker[1])}")
                else:
                    removes.append(self.name(name))
        for attr, amount in op.add.items():
            _check_name(attr)
            if not _is_number(amount):
                raise TypeError("add takes numbers")
            name = self.name(attr)
            sets.append(f"{name} = if_not_exists({name}, {self.value(Decimal(0))}) + {self.value(amount)}")
            scale, exact = _marker_names(attr)
            removes.append(self.name(exact))
            exponent = _exponent(Decimal(amount))
            if exponent < 0:
                adds.append(f"{self.name(scale)} {self.raw_value({'NS': [str(exponent)]})}")
        for attr in op.remove:
            _check_name(attr)
            removes += [self.name(attr), *map(self.name, _marker_names(attr))]
        for attr, value in op.init.items():
            _check_name(attr)
            if (value is None and _is_index_key(attr)) or attr in present:
                continue
            marker = _marker(value)
            if marker is None:
                name = self.name(attr)
                sets.append(f"{name} = if_not_exists({name}, {self.value(value)})")
            else:
                kind, marker_value = marker
                sets.append(f"{self.name(attr)} = {self.value(value)}")
                sets.append(f"{self.name(kind + attr)} = {self.raw_value(marker_value)}")
        if not (sets or removes or adds):
            removes.append(self.name(_NO_ATTRIBUTE))  # creates the item if missing, changes nothing
        clauses = []
        if sets:
            clauses.append("SET " + ", ".join(sets))
        if removes:
            clauses.append("REMOVE " + ", ".join(removes))
        if adds:
            clauses.append("ADD " + ", ".join(adds))
        return " ".join(clauses)


@dataclass(frozen=True, slots=True)
class Assumption:
    """What the request for an `Update` assumes of the current item, checked by its guard.

    `recreate`: the item is stored but expired, so the update is sent as a `Put` of its result;
    `present`: which `init` attributes whose values need an exponent marker already exist (an
    `if_not_exists` cannot set a marker only when it sets the value).
    """

    recreate: bool = False
    present: frozenset[str] = frozenset()

    @classmethod
    def of(cls, op: Update, current: Item | None, now: float) -> Assumption:
        if current is not None and not is_live(current, now):
            return cls(recreate=True)
        if current is None:
            return cls()
        return cls(present=frozenset(a for a, v in op.init.items() if _marker(v) is not None and a in current))


# --- credentials -------------------------------------------------------------------------------

StsClientFactory = Callable[[], AbstractAsyncContextManager[Any]]


class AssumeRole:
    """Fetches temporary credentials for a role from STS (the `refresh_using` of botocore's
    refreshable credentials, which call it again before the credentials expire)."""

    def __init__(
        self, sts_client: StsClientFactory, role_arn: str, session_name: str, duration_seconds: int = 3600
    ) -> None:
        self._sts_client = sts_client
        self.role_arn = role_arn
        self.session_name = session_name
        self.duration_seconds = duration_seconds

    async def __call__(self) -> dict[str, str]:
        async with self._sts_client() as sts:
            response = await sts.assume_role(
                RoleArn=self.role_arn,
                RoleSessionName=self.session_name,
                DurationSeconds=self.duration_seconds,
            )
        credentials = response["Credentials"]
        expiration = credentials["Expiration"]
        return {
            "access_key": credentials["AccessKeyId"],
            "secret_key": credentials["SecretAccessKey"],
            "token": credentials["SessionToken"],
            "expiry_time": expiration.isoformat() if isinstance(expiration, datetime) else str(expiration),
        }


def role_credentials(fetch: Callable[[], Awaitable[dict[str, str]]], time_fetcher: Any = None) -> Any:
    """Credentials fetched on first use and refreshed by botocore from 15 minutes before expiry
    (mandatory from 10 minutes before)."""
    if time_fetcher is None:
        return AioDeferredRefreshableCredentials(refresh_using=fetch, method="assume-role")
    return AioDeferredRefreshableCredentials(refresh_using=fetch, method="assume-role", time_fetcher=time_fetcher)


# --- the store ----------------------------------------------------------------------------------


_shared_session: AioSession | None = None


def shared_session() -> AioSession:
    """One botocore session per process: it caches the service models, so a new store's client
    opens in milliseconds instead of a quarter of a second."""
    global _shared_session
    if _shared_session is None:
        _shared_session = get_session()
    return _shared_session


def _client_config(max_pool_connections: int = 64, connect_timeout: float = 5) -> Any:
    return AioConfig(
        max_pool_connections=max_pool_connections,
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=connect_timeout,
        read_timeout=30,
    )


class DynamoDBStore:
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
            raise StoreError(f"dynamodb {operation}: {_error_code(exc)}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"dynamodb {operation}: {exc}") from exc

    # --- schema -------------------------------------------------------------------------------

    def _table_spec(self, table: str) -> dict[str, Any]:
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
            "TableName": self.table_name(table),
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [{"AttributeName": n, "AttributeType": t} for n, t in definitions.items()],
            "KeySchema": [
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            "GlobalSecondaryIndexes": indexes,
        }

    async def _create_table(self, table: str, wait_seconds: float) -> None:
        client = await self._client()
        name = self.table_name(table)
        try:
            await client.create_table(**self._table_spec(table))
        except ClientError as exc:
            if _error_code(exc) != "ResourceInUseException":
                raise StoreError(f"dynamodb create_table {name}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"dynamodb create_table {name}: {exc}") from exc
        await self._wait_active(name, wait_seconds)
        await self._enable_ttl(name)

    async def _wait_active(self, name: str, wait_seconds: float) -> None:
        deadline = time.monotonic() + wait_seconds
        delay = 0.05
        while True:
            table = (await self._call("describe_table", TableName=name))["Table"]
            indexes = table.get("GlobalSecondaryIndexes", [])
            if table["TableStatus"] == "ACTIVE" and all(i.get("IndexStatus") == "ACTIVE" for i in indexes):
                return
            if time.monotonic() > deadline:
                raise StoreError(f"dynamodb table {name} is not ACTIVE after {wait_seconds:.0f} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _enable_ttl(self, name: str) -> None:
        client = await self._client()
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

    async def create_tables(self, *, wait_seconds: float = 300.0) -> None:
        await asyncio.gather(*(self._create_table(table, wait_seconds) for table in keys.TABLES))

    # --- reads --------------------------------------------------------------------------------

    async def get(self, table: str, key: Key, *, consistent: bool = True) -> Item | None:
        response = await self._call(
            "get_item", TableName=self.table_name(table), Key=_encode_key(key), ConsistentRead=consistent
        )
        raw = response.get("Item")
        if raw is None:
            return None
        item = decode_item(raw)
        return item if is_live(item, time.time()) else None

    async def batch_get(self, table: str, keys: Sequence[Key]) -> list[Item]:
        if len(keys) > 100:
            raise ValueError("batch_get takes at most 100 keys")
        name = self.table_name(table)
        unique = {(k["pk"], k["sk"]): _encode_key(k) for k in keys}
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

    async def query(
        self,
        table: str,
        pk: str,
        *,
        sk: SortKey | None = None,
        index: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        descending: bool = False,
        consistent: bool = True,
    ) -> Page:
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        if index is None:
            pk_attr, sk_attr, numeric = "pk", "sk", False
        elif index in keys.INDEXES:
            spec = keys.INDEXES[index]
            pk_attr, sk_attr, numeric = spec.pk_attr, spec.sk_attr, spec.sk_type == "N"
        else:
            raise ValueError(f"unknown index {index!r}")
        start = self._start_key(cursor, pk, pk_attr, sk_attr, numeric) if cursor is not None else None
        now = time.time()
        expr = Expression(now)
        key_condition = f"{expr.name(pk_attr)} = {expr.value(pk)}"
        if sk is not None:
            key_condition += f" AND {expr.sort_key(sk_attr, sk, numeric)}"
        ttl = expr.name(TTL_ATTRIBUTE)
        params: dict[str, Any] = {
            "TableName": self.table_name(table),
            "KeyConditionExpression": key_condition,
            "FilterExpression": f"attribute_not_exists({ttl}) OR {ttl} > {expr.value(expr.now)}",
            "ScanIndexForward": not descending,
            "Limit": limit + 1,
            **expr.params(),
        }
        if index is None:
            params["ConsistentRead"] = consistent
        else:
            params["IndexName"] = index
        items: list[Item] = []
        while len(items) <= limit:
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
        if len(items) <= limit:
            return Page(items, None)
        items = items[:limit]
        last = items[-1]
        cursor_key: dict[str, Any] = {"pk": last["pk"], "sk": last["sk"]}
        if index is not None:
            cursor_key[pk_attr] = last[pk_attr]
            cursor_key[sk_attr] = last[sk_attr]
        return Page(items, encode_cursor(cursor_key))

    @staticmethod
    def _start_key(cursor: str, pk: str, pk_attr: str, sk_attr: str, numeric: bool) -> dict[str, AttributeValue]:
        last = decode_cursor(cursor)
        start: dict[str, AttributeValue] = {"pk": {"S": last["pk"]}, "sk": {"S": last["sk"]}}
        if pk_attr != "pk":
            index_pk, index_sk = last.get(pk_attr), last.get(sk_attr)
            sk_ok = isinstance(index_sk, Decimal) if numeric else isinstance(index_sk, str)
            if not isinstance(index_pk, str) or not sk_ok:
                raise InvalidCursor("invalid cursor")
            start[pk_attr] = {"S": index_pk}
            start[sk_attr] = serialize(index_sk)
        if last[pk_attr] != pk:
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
                {"TableName": table, "Key": _encode_key(op.key), "UpdateExpression": update},
            )
            guards = [expr.absent_or_live(), *expr.init_guard(op, assumption.present)]
            if op.condition is not None:
                guards.append(expr.condition(op.condition))
            condition = " AND ".join(guards)
            # The item tells a failed assumption from a failed condition of the caller's.
            body["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        elif isinstance(op, Delete):
            kind, body = "Delete", {"TableName": table, "Key": _encode_key(op.key)}
            condition = None if op.condition is None else expr.condition(op.condition)
        elif isinstance(op, Check):
            kind, body = "ConditionCheck", {"TableName": table, "Key": _encode_key(op.key)}
            condition = expr.condition(op.condition)
        else:
            raise TypeError(f"not an op: {op!r}")
        if condition is not None:
            body["ConditionExpression"] = condition
        body.update(expr.params())
        return {kind: body}

    async def transact(self, ops: Sequence[Op], *, token: str | None = None) -> None:
        ops = list(ops)
        check_ops(ops)
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
                code = _error_code(exc)
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
            if not evaluate(op.condition, current, now):
                raise ConditionFailed(index)
            assumption = Assumption.of(op, current, now)
            if assumption == assumptions[index]:
                raise ConditionFailed(index)  # DynamoDB said no; trust it
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


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))
