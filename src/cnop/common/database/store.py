"""The storage port: one small interface that every engine implements and every DAO uses.

Items are plain dicts. Every item has string attributes `pk` and `sk`; it may carry index
attributes (`gsi1pk`/`gsi1sk`, `gsi2pk`/`gsi2sk`, see `keys.INDEXES`) and `expires_at` (epoch
seconds) after which it reads as absent. Numbers are `Decimal` (ints are accepted on write and
read back as `Decimal`); floats are refused so that no binary fraction ever reaches money.

Writes go through `transact`, all or nothing, each op guarded by an optional typed condition.
"""

from __future__ import annotations

import base64
import binascii
import operator
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any, ClassVar, Generic, Protocol, TypeAlias, runtime_checkable

import simplejson
from typing_extensions import TypeVar

from cnop.common.database import keys
from cnop.common.exceptions import ConditionFailed, StoreError

Item: TypeAlias = dict[str, Any]
Key: TypeAlias = Mapping[str, str]

MAX_TRANSACTION_OPS = 100
KEY_ATTRIBUTES = ("pk", "sk")
TTL_ATTRIBUTE = "expires_at"


# --- conditions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exists:
    """The item exists (and has not expired)."""


@dataclass(frozen=True, slots=True)
class NotExists:
    """No item with this key exists (or it has expired)."""


@dataclass(frozen=True, slots=True)
class AttrExists:
    attr: str


@dataclass(frozen=True, slots=True)
class AttrNotExists:
    attr: str


@dataclass(frozen=True, slots=True)
class _Comparison:
    """`attr <symbol> value`: the shape of the six comparisons below."""

    attr: str
    value: Any
    symbol: ClassVar[str]


class Eq(_Comparison):
    __slots__ = ()
    symbol = "="


class Ne(_Comparison):
    __slots__ = ()
    symbol = "<>"


class Lt(_Comparison):
    __slots__ = ()
    symbol = "<"


class Le(_Comparison):
    __slots__ = ()
    symbol = "<="


class Gt(_Comparison):
    __slots__ = ()
    symbol = ">"


class Ge(_Comparison):
    __slots__ = ()
    symbol = ">="


# What each comparison symbol means, for conditions and sort keys alike (DynamoDB's `<>` is `!=`).
COMPARE: Mapping[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True, slots=True, init=False)
class _Group:
    conditions: tuple[Condition, ...]

    def __init__(self, *conditions: Condition) -> None:
        object.__setattr__(self, "conditions", tuple(conditions))


class And(_Group):
    """Every condition holds (none: true)."""

    __slots__ = ()


class Or(_Group):
    """At least one condition holds (none: false)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Not:
    condition: Condition


Comparison: TypeAlias = Eq | Ne | Lt | Le | Gt | Ge
Condition: TypeAlias = Exists | NotExists | AttrExists | AttrNotExists | Comparison | And | Or | Not


def is_live(item: Item | None, now: float) -> bool:
    """True when `item` exists and its TTL, if any, has not passed."""
    if item is None:
        return False
    expires = item.get(TTL_ATTRIBUTE)
    return expires is None or Decimal(expires) > Decimal(repr(now))


def _comparable(left: Any, right: Any) -> bool:
    numeric = (int, Decimal)
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool)
    if isinstance(left, numeric) and isinstance(right, numeric):
        return True
    return type(left) is type(right)


def evaluate(condition: Condition | None, item: Item | None, now: float) -> bool:
    """Evaluate a condition against the current item (None when absent), as DynamoDB would.

    A comparison with a missing attribute, or between values of different types, is false.
    """
    if condition is None:
        return True
    live = item if is_live(item, now) else None
    match condition:
        case Exists():
            return live is not None
        case NotExists():
            return live is None
        case AttrExists(attr):
            return live is not None and attr in live
        case AttrNotExists(attr):
            return live is None or attr not in live
        case And(conditions):
            return all(evaluate(c, item, now) for c in conditions)
        case Or(conditions):
            return any(evaluate(c, item, now) for c in conditions)
        case Not(inner):
            return not evaluate(inner, item, now)
        case Eq() | Ne() | Lt() | Le() | Gt() | Ge():
            if live is None or condition.attr not in live:
                return False
            left, right = live[condition.attr], condition.value
            return _comparable(left, right) and bool(COMPARE[condition.symbol](left, right))
    raise TypeError(f"not a condition: {condition!r}")


def check_condition(index: int, op: Op, item: Item | None, now: float) -> Item | None:
    """Raise ConditionFailed(index) unless the condition of `op`, the transaction's op number
    `index`, holds on `item` (the stored item, None when absent; the error carries it if live);
    return the item if it is live."""
    live = item if is_live(item, now) else None
    if not evaluate(op.condition, item, now):
        raise ConditionFailed(index, item=live)
    return live


# --- sort-key conditions for queries ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SortKey:
    """A condition on the sort key of a query: `begins_with`, `between`, or a comparison."""

    op: str  # "begins_with" | "between" | "<" | "<=" | ">" | ">="
    value: Any
    high: Any = None

    @classmethod
    def prefix(cls, prefix: str) -> SortKey:
        return cls("begins_with", prefix)

    @classmethod
    def between(cls, low: Any, high: Any) -> SortKey:
        return cls("between", low, high)

    @classmethod
    def lt(cls, value: Any) -> SortKey:
        return cls("<", value)

    @classmethod
    def le(cls, value: Any) -> SortKey:
        return cls("<=", value)

    @classmethod
    def gt(cls, value: Any) -> SortKey:
        return cls(">", value)

    @classmethod
    def ge(cls, value: Any) -> SortKey:
        return cls(">=", value)

    def matches(self, value: Any) -> bool:
        if self.op == "begins_with":
            return isinstance(value, str) and value.startswith(self.value)
        if self.op == "between":
            return bool(self.value <= value <= self.high)
        if self.op in SORT_KEY_COMPARISONS:
            return bool(COMPARE[self.op](value, self.value))
        raise ValueError(f"unknown sort-key operator {self.op!r}")


SORT_KEY_COMPARISONS = frozenset({"<", "<=", ">", ">="})


# --- write operations -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Put:
    """Create or replace a whole item."""

    table: str
    item: Item
    condition: Condition | None = None

    @property
    def key(self) -> Key:
        return {"pk": self.item["pk"], "sk": self.item["sk"]}


@dataclass(frozen=True, slots=True)
class Update:
    """Change some attributes of an item, creating it if missing (unless the condition forbids).

    `set` assigns values, `add` adds numbers (a missing attribute counts as 0), `remove` deletes
    attributes, and `init` assigns values only to attributes that are missing (a creation time,
    say). An attribute may appear in only one of the four.
    """

    table: str
    key: Key
    set: Mapping[str, Any] = field(default_factory=dict)
    add: Mapping[str, Decimal | int] = field(default_factory=dict)
    remove: tuple[str, ...] = ()
    condition: Condition | None = None
    init: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delete:
    table: str
    key: Key
    condition: Condition | None = None


@dataclass(frozen=True, slots=True)
class Check:
    """A condition on an item that the transaction does not write."""

    table: str
    key: Key
    condition: Condition


Op: TypeAlias = Put | Update | Delete | Check


PageItem = TypeVar("PageItem", default=Item)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[PageItem]):
    """One page of a query: raw items from the store, typed entities from a DAO (`Page[Order]`)."""

    items: list[PageItem]
    next_cursor: str | None = None

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None


MAX_BATCH_GET = 100
MAX_QUERY_LIMIT = 1000


@dataclass(slots=True, eq=False)
class Query:
    """The checked arguments of one `query`, and the paging both engines share (read-only).

    `pk_attr`/`sk_attr` are the attributes the query reads (the base table's keys, or an index's),
    `numeric` whether that sort key is a number. Not frozen: a frozen dataclass's `__init__` costs
    a few microseconds more, on every query.
    """

    table: str
    pk: str
    sk: SortKey | None = None
    index: str | None = None
    limit: int = 50
    cursor: str | None = None
    descending: bool = False
    consistent: bool = True
    pk_attr: str = field(init=False, default="pk")
    sk_attr: str = field(init=False, default="sk")
    numeric: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_QUERY_LIMIT}")
        if self.index is not None:
            spec = keys.INDEXES.get(self.index)
            if spec is None:
                raise ValueError(f"unknown index {self.index!r}")
            self.pk_attr, self.sk_attr, self.numeric = spec.pk_attr, spec.sk_attr, spec.sk_type == "N"
        if self.sk is not None:
            if self.sk.op not in SORT_KEY_COMPARISONS and self.sk.op not in ("begins_with", "between"):
                raise ValueError(f"unknown sort-key operator {self.sk.op!r}")
            if self.sk.op == "begins_with" and self.numeric:
                raise ValueError("begins_with needs a string sort key")

    def page(self, items: list[Item]) -> Page:
        """The page for the live items an engine read in order, one more than `limit` if there are
        more: the cursor is the last returned item's key (and its index key, on an index)."""
        if len(items) <= self.limit:
            return Page(items, None)
        items = items[: self.limit]
        last = items[-1]
        cursor_key: dict[str, Any] = {"pk": last["pk"], "sk": last["sk"]}
        if self.index is not None:
            cursor_key[self.pk_attr] = last[self.pk_attr]
            cursor_key[self.sk_attr] = last[self.sk_attr]
        return Page(items, encode_cursor(cursor_key))

    def send(self, store: ItemStore) -> Awaitable[Page]:
        """This query, asked of another store (what a wrapper passes on)."""
        return store.query(
            self.table,
            self.pk,
            sk=self.sk,
            index=self.index,
            limit=self.limit,
            cursor=self.cursor,
            descending=self.descending,
            consistent=self.consistent,
        )


class ItemStore(ABC):
    """What every store provides, and every DAO uses. All methods are coroutines; none blocks the
    event loop.

    The port's methods are written once, here: they check their arguments (a transaction by
    `check_ops`, a query into a `Query`) and hand them to the engine's hook (`_get`, `_batch_get`,
    `_query`, `_transact`), which leaves expired items out of what it reads. An engine implements
    the hooks; a wrapper around another store is a `StoreWrapper`.
    """

    # `get` and `query` hand back the engine's awaitable itself (no coroutine of their own around
    # it): they are the hottest calls of the port, and every frame costs on every read.

    def get(self, table: str, key: Key, *, consistent: bool = True) -> Awaitable[Item | None]:
        """The live item stored under `key`, or None (absent or expired)."""
        return self._get(table, key, consistent)

    async def batch_get(self, table: str, keys: Sequence[Key]) -> list[Item]:
        """The live items among `keys`, in no particular order."""
        if len(keys) > MAX_BATCH_GET:
            raise ValueError(f"batch_get takes at most {MAX_BATCH_GET} keys")
        return await self._batch_get(table, list(keys))

    def query(
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
    ) -> Awaitable[Page]:
        """Items under one partition key, ordered by sort key; a page holds at most `limit`.

        The arguments are checked when it is called (a `ValueError` before anything is awaited)."""
        return self._query(Query(table, pk, sk, index, limit, cursor, descending, consistent))

    async def transact(self, ops: Sequence[Op], *, token: str | None = None) -> None:
        """Apply every op or none; raise ConditionFailed(index) for the first failing condition.

        `token` makes a retried transaction idempotent where the engine supports it.
        """
        ops = list(ops)
        check_ops(ops)
        await self._transact(ops, token)

    @abstractmethod
    async def create_tables(self) -> None:
        """Create the tables and indexes if missing (idempotent)."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreError when the store cannot answer."""

    @abstractmethod
    async def close(self) -> None: ...

    # --- what an engine implements ------------------------------------------------------------

    # (Awaitables, not coroutines: an engine may hand back the one its thread hop makes.)

    # Reads leave out expired items themselves: an engine knows which of its rows carry a TTL
    # at all (most do not) and checks `is_live` only on those.

    @abstractmethod
    def _get(self, table: str, key: Key, consistent: bool) -> Awaitable[Item | None]:
        """The live item stored under `key`, or None (absent, or expired: see `is_live`)."""

    @abstractmethod
    def _batch_get(self, table: str, keys: list[Key]) -> Awaitable[list[Item]]:
        """The live items stored under `keys` (at most `MAX_BATCH_GET` keys)."""

    @abstractmethod
    def _query(self, query: Query) -> Awaitable[Page]:
        """The page of live items (`query.page` makes it from the items read)."""

    @abstractmethod
    async def _transact(self, ops: list[Op], token: str | None) -> None:
        """Apply the checked `ops` all or none (see `transact`)."""


class StoreWrapper(ItemStore):
    """A store that passes every call on to `inner`, each through `around(name, call)`: the one
    place where a wrapper (a fault injector, a recorder) steps in. `name` is the port method's."""

    def __init__(self, inner: ItemStore) -> None:
        self.inner = inner

    async def around(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        return await call()

    async def create_tables(self) -> None:
        await self.inner.create_tables()

    async def ping(self) -> None:
        await self.around("ping", self.inner.ping)

    async def close(self) -> None:
        await self.inner.close()

    async def _get(self, table: str, key: Key, consistent: bool) -> Item | None:
        return await self.around("get", partial(self.inner.get, table, key, consistent=consistent))

    async def _batch_get(self, table: str, keys: list[Key]) -> list[Item]:
        return await self.around("batch_get", partial(self.inner.batch_get, table, keys))

    async def _query(self, query: Query) -> Page:
        return await self.around("query", partial(query.send, self.inner))

    async def _transact(self, ops: list[Op], token: str | None) -> None:
        await self.around("transact", partial(self.inner.transact, ops, token=token))


Plan: TypeAlias = Callable[["Item | None"], Sequence[Op]]
"""Builds a transaction's ops from one item as it is inside that transaction (None: absent)."""


@runtime_checkable
class PlannedTransactions(Protocol):
    """An engine that reads an item and applies what a plan builds from it in ONE transaction.

    No other write can come between the read and the writes, so the plan needs no guard on what
    it read (a version, say) and is never retried for a change made meanwhile. SQLite does it
    (the plan runs on the store thread, under the write lock). DynamoDB cannot (a transaction
    does not read), so it does not offer this; callers read, build and apply under guards there.
    """

    async def transact_planned(self, table: str, key: Key, plan: Plan) -> None:
        """Read the live item at `key` of `table`, apply the ops `plan(item)` returns, all or none.

        An exception raised by `plan` aborts the transaction (nothing is written) and is raised
        here; a failing condition of a built op raises `ConditionFailed` with its index among the
        built ops. `plan` runs on another thread and may run more than once (only its last run's
        ops are applied); it must be quick, and must not depend on context variables.
        """
        ...


async def query_all(
    store: ItemStore, table: str, pk: str, *, sk: SortKey | None = None, index: str | None = None
) -> AsyncIterator[Item]:
    """Every item of a query, page after page (for bounded sets: a user's holdings, crossed orders)."""
    cursor = None
    while True:
        page = await store.query(table, pk, sk=sk, index=index, limit=500, cursor=cursor)
        for item in page.items:
            yield item
        cursor = page.next_cursor
        if cursor is None:
            return


async def filtered_query(
    store: ItemStore,
    table: str,
    pk: str,
    matches: Callable[[Item], bool],
    *,
    sk: SortKey | None = None,
    limit: int = 50,
    cursor: str | None = None,
    descending: bool = False,
) -> Page:
    """A page of the base-table items that `matches`, reading on until the page is full.

    The cursor is the key of the last item returned, so the next page resumes right after it.
    """
    found: list[Item] = []
    while True:
        page = await store.query(table, pk, sk=sk, limit=100, cursor=cursor, descending=descending)
        for item in page.items:
            if matches(item):
                found.append(item)
                if len(found) == limit:
                    return Page(found, encode_cursor({"pk": item["pk"], "sk": item["sk"]}))
        if page.next_cursor is None:
            return Page(found, None)
        cursor = page.next_cursor


# --- helpers shared by engines ----------------------------------------------------------------


def check_ops(ops: Sequence[Op]) -> None:
    """Refuse what no engine accepts: empty, too many ops, or two ops on one item."""
    if not ops:
        raise ValueError("a transaction needs at least one op")
    if len(ops) > MAX_TRANSACTION_OPS:
        raise ValueError(f"a transaction holds at most {MAX_TRANSACTION_OPS} ops")
    seen: set[tuple[str, str, str]] = set()
    for op in ops:
        key = op.item if isinstance(op, Put) else op.key  # a Put's key is its item's (no dict built)
        ident = (op.table, key["pk"], key["sk"])
        if ident in seen:
            raise ValueError(f"two ops on one item in a transaction: {ident}")
        seen.add(ident)
        if isinstance(op, Update):
            names = [*op.set, *op.add, *op.remove, *op.init]
            distinct = set(names)
            if len(names) != len(distinct):
                raise ValueError("an attribute may be set, added, removed or initialised: one of these")
            if not distinct.isdisjoint(KEY_ATTRIBUTES):
                raise ValueError("key attributes cannot be updated")
        elif isinstance(op, Put):
            check_item(op.item)


def check_item(item: Item) -> None:
    for name in KEY_ATTRIBUTES:
        if not isinstance(item.get(name), str) or not item[name]:
            raise ValueError(f"item needs a non-empty string {name!r}")
    _refuse_floats(item)


# The exact types of nearly every stored value: neither a float nor a container, so one set
# lookup clears them (subclasses of anything, e.g. an enum, take the isinstance checks).
_PLAIN_TYPES = frozenset({str, Decimal, int, bool, type(None)})


def _refuse_floats(value: Any) -> None:
    # On every write: a flat loop over the common case (scalars), recursion only for containers.
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return
    values = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else (value,)
    plain = _PLAIN_TYPES
    for inner in values:
        if type(inner) in plain:
            continue
        if isinstance(inner, float):
            raise TypeError("floats are not stored; use Decimal")
        if isinstance(inner, dict | list | tuple):
            _refuse_floats(inner)


def apply_update(current: Item | None, op: Update) -> Item:
    """The item that `op` leaves behind, given the current one (None when absent)."""
    item: Item = dict(current) if current is not None else {"pk": op.key["pk"], "sk": op.key["sk"]}
    for name, value in op.set.items():
        _refuse_floats(value)
        item[name] = value
    for name, amount in op.add.items():
        if isinstance(amount, bool) or not isinstance(amount, int | Decimal):
            raise TypeError("add takes numbers")
        base = item.get(name, Decimal(0))
        if isinstance(base, bool) or not isinstance(base, int | Decimal):
            raise StoreError(f"cannot add to non-numeric attribute {name!r}")
        item[name] = Decimal(base) + Decimal(amount)
    for name in op.remove:
        item.pop(name, None)
    for name, value in op.init.items():
        _refuse_floats(value)
        item.setdefault(name, value)
    return item


def encode_cursor(key: Mapping[str, Any]) -> str:
    raw = simplejson.dumps(
        {name: ({"n": str(value)} if isinstance(value, Decimal | int) else value) for name, value in key.items()},
        separators=(",", ":"),
        sort_keys=True,
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


class InvalidCursor(ValueError):
    """The client sent a cursor this store did not make."""


def decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = simplejson.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("invalid cursor") from exc
    if not isinstance(raw, dict):
        raise InvalidCursor("invalid cursor")
    key: dict[str, Any] = {}
    for name, value in raw.items():
        if isinstance(value, dict) and set(value) == {"n"}:
            try:
                key[name] = Decimal(value["n"])
            except ArithmeticError as exc:
                raise InvalidCursor("invalid cursor") from exc
        elif isinstance(value, str):
            key[name] = value
        else:
            raise InvalidCursor("invalid cursor")
    if not isinstance(key.get("pk"), str) or not isinstance(key.get("sk"), str):
        raise InvalidCursor("invalid cursor")
    return key
