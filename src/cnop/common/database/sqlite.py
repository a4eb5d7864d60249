"""The embedded engine: one SQLite file, one SQL table per logical table, WAL, no set-up.

Every write runs in `BEGIN IMMEDIATE`, so conditions are checked and writes applied while this
connection holds the file's write lock: several processes may share one file safely. Calls run on
one dedicated thread per store, so the event loop never waits on the disk.

Group commit: the transactions that concurrent callers queue while the store thread is busy run
together in one `BEGIN IMMEDIATE ... COMMIT`, each in its own `SAVEPOINT`. A transaction whose
condition fails (or that is refused otherwise) rolls back to its savepoint alone and the others
commit; a batch that fails as a whole (an SQLite error, at `COMMIT` say) is rolled back and its
transactions run again one by one. Every caller's future resolves only after the commit that
holds its transaction, so durability is that of one transaction per commit; what a batch saves is
`BEGIN`/`COMMIT` and the hops between the event loop and the store thread, paid once per batch.

Reads (`inline_reads`, the default for a file): the event loop's thread reads on a connection of
its own, in place, without the hop to the store thread and back. In WAL mode a reader never
waits for the writer and sees every transaction committed before the read began, so a caller
still reads what it wrote once its `transact` returned. The read connection never waits for a
lock (`busy_timeout` 0): a read SQLite answers "busy" (a recovery, say) goes to the store thread,
as do reads before the tables are known to exist and reads from any other thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import simplejson

from cnop.common.database import keys
from cnop.common.database.store import (
    SORT_KEY_COMPARISONS,
    TTL_ATTRIBUTE,
    Check,
    Delete,
    Item,
    ItemStore,
    Key,
    NotExists,
    Op,
    Page,
    Plan,
    Put,
    Query,
    Update,
    apply_update,
    check_condition,
    check_ops,
    decode_cursor,
    is_live,
)
from cnop.common.exceptions import ConditionFailed, StoreError

T = TypeVar("T")
log = logging.getLogger(__name__)

# OFF is here for measurements only; the settings accept NORMAL, FULL and EXTRA.
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
MAX_BATCH = 64  # transactions per group commit: bounds how long one commit holds the write lock
_INT_DIGITS = 20
_FRACTION_DIGITS = 18


def encode_number_key(value: Any) -> str:
    """A non-negative number as text whose string order is its numeric order."""
    number = Decimal(value)
    if number < 0 or number >= Decimal(10) ** _INT_DIGITS:
        raise ValueError(f"numeric index keys must be in [0, 1e{_INT_DIGITS}): {value}")
    scaled = number.scaleb(_FRACTION_DIGITS)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"numeric index keys carry at most {_FRACTION_DIGITS} decimal places")
    return f"{int(scaled):0{_INT_DIGITS + _FRACTION_DIGITS}d}"


_MAX_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix` (None: no such bound).

    SQLite compares TEXT as UTF-8 bytes, which orders like code points, so `prefix <= s <
    prefix_end(prefix)` holds exactly for the strings `s` that start with `prefix`.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop()) + 1
        if last in _SURROGATES:  # not encodable, and nothing lies between: skip to U+E000
            last = _SURROGATES.stop
        if last <= _MAX_CODE_POINT:
            return "".join(chars) + chr(last)
    return None


_COLUMNS = [
    "pk",
    "sk",
    *(col for spec in keys.INDEXES.values() for col in (spec.pk_attr, spec.sk_attr)),
    "expires_at",
    "body",
]
_INSERT_NEW_SQL = {
    table: f"INSERT INTO {table} ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"  # noqa: S608
    for table in keys.TABLES
}
_INSERT_SQL = {
    table: f"INSERT OR REPLACE INTO {table} ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"  # noqa: S608
    for table in keys.TABLES
}


_INDEX_COLUMNS = tuple((spec.pk_attr, spec.sk_attr, spec.sk_type == "N") for spec in keys.INDEXES.values())


def _columns(item: Item) -> list[Any]:
    """The row for an item: keys, index columns (numbers made sortable), TTL and the JSON body."""
    columns: list[Any] = [item["pk"], item["sk"]]
    get = item.get
    for pk_attr, sk_attr, numeric in _INDEX_COLUMNS:
        pk_value, sk_value = get(pk_attr), get(sk_attr)
        if pk_value is None or sk_value is None:
            columns += (None, None)
        else:
            columns += (pk_value, encode_number_key(sk_value) if numeric else sk_value)
    expires = get(TTL_ATTRIBUTE)
    columns.append(float(expires) if expires is not None else None)
    columns.append(_dumps(item))
    return columns


# Bodies are JSON with every number written exactly as its Decimal's text (`1000.10`, `1E-18`)
# and read back as Decimals, ints included. msgspec writes them (one C pass, about 6x quicker than
# simplejson's encoder, which wrote the same text but escaped non-ASCII characters) and reads them
# (a float literal goes to `Decimal` as text; an int literal comes back an int and is made a
# Decimal after). Only an integral `-0` would lose its sign that way, so a body holding one is read
# by simplejson, which parses every number as a Decimal.
_ENCODER = msgspec.json.Encoder(decimal_format="number")
_DECODER = msgspec.json.Decoder(float_hook=Decimal)
_EXACT_DECODER = simplejson.JSONDecoder(parse_float=Decimal, parse_int=Decimal)
_NEGATIVE_ZERO = re.compile(r"-0(?![0-9.eE])")  # an integral -0, or a false alarm inside a string


def _dumps(item: Item) -> str:
    try:
        return _ENCODER.encode(item).decode()
    except (msgspec.EncodeError, ValueError) as exc:  # NaN or an infinity: no engine stores them
        raise ValueError(f"not stored: {exc}") from None


def _ints_to_decimals(value: Any) -> None:
    """Every int inside `value` (not bools) made a Decimal, in place."""
    entries = value.items() if type(value) is dict else enumerate(value)
    for name, inner in entries:
        kind = type(inner)
        if kind is int:
            value[name] = Decimal(inner)
        elif kind is dict or kind is list:
            _ints_to_decimals(inner)


def _loads(body: str) -> Item:
    if _NEGATIVE_ZERO.search(body) is not None:
        exact: Item = _EXACT_DECODER.decode(body)
        return exact
    item: Item = _DECODER.decode(body)
    _ints_to_decimals(item)
    return item


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller stopped waiting (cancelled)
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class _StoreThread:
    """The one thread that runs a store's calls, in the order they come.

    What a one-worker `ThreadPoolExecutor` did, with less bookkeeping per call (no concurrent
    future to chain to the loop's): a call is one queue put, and its answer one
    `call_soon_threadsafe`. Started on first use; a daemon, so that a store nobody closed does
    not hold the interpreter at exit.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn(*args)` on the thread, answering nobody (RuntimeError once shut down)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new work after shutdown")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
        self._jobs.put(partial(fn, *args) if args else fn)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` run on the thread, its result or exception delivered to this loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def job() -> None:
            if future.cancelled():  # nobody waits for it any more: as an executor, do not run it
                return
            try:
                result, error = fn(*args), None
            except BaseException as exc:
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting there
                loop.call_soon_threadsafe(_resolve, future, result, error)

        self.submit(job)
        return await future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # a job answers its own caller; this is a bug in the store
                log.exception("sqlite store thread: a job raised")

    def shutdown(self) -> None:
        """Refuse new work, let the queued work finish, and stop the thread."""
        with self._lock:
            self._closed, thread = True, self._thread
        self._jobs.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join()


@dataclass(slots=True, eq=False)
class _Queued:
    """A transaction waiting for the store thread, and what became of it."""

    ops: list[Op]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    planned: _Planned | None = None
    committed: bool = False
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class _Planned:
    """A transaction whose ops `plan` builds from the item at `key` of `table`, read inside it."""

    table: str
    key: Key
    plan: Plan


def _settle(batch: Sequence[_Queued]) -> None:
    """On the callers' loop: resolve each future with what became of its transaction."""
    for queued in batch:
        if queued.future.done():  # the caller stopped waiting (cancelled)
            continue
        if queued.committed:
            queued.future.set_result(None)
        elif queued.error is not None:
            queued.future.set_exception(queued.error)
        else:
            queued.future.set_exception(StoreError("sqlite: the store thread stopped before this transaction ran"))


class SQLiteStore(ItemStore):
    """`ItemStore` on a SQLite file (`sqlite:///path/to.db`, or `sqlite://:memory:`).

    Calls run on one dedicated thread per store, so the event loop never waits on the disk or on
    another process's write lock. (Running them inline on the loop was measured too: faster in
    isolation, but under HTTP load it gave 0.12x instead of 0.19x the baseline's order rate and a
    ten times worse p99; see benchmarks/README.md.)
    """

    def __init__(
        self,
        path: str,
        *,
        busy_timeout_ms: int = 30_000,
        synchronous: str = "NORMAL",
        group_commit: bool = True,
        max_batch: int = MAX_BATCH,
        inline_reads: bool = True,
    ) -> None:
        """`group_commit=False` runs every transaction in its own `BEGIN IMMEDIATE ... COMMIT`
        (for measurements); `max_batch` bounds the transactions of one group commit;
        `inline_reads=False` sends every read to the store thread (see the module docstring;
        an in-memory database has one connection, so its reads always go there)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}")
        self.path = path
        self.synchronous = synchronous
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = _StoreThread("sqlite-store")
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._tables_ready = False
        self.group_commit = group_commit
        self.max_batch = max_batch
        self._queue: deque[_Queued] = deque()
        self._queue_lock = threading.Lock()
        self._draining = False  # a drain of the queue is scheduled on (or running on) the store thread
        self.inline_reads = inline_reads and path != ":memory:"
        self._reader: sqlite3.Connection | None = None
        self._reader_thread: int | None = None  # the thread whose reads use `_reader` (the first to read)
        self._closing = False

    # --- plumbing -----------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives the process being killed (the WAL is in the OS),
            # and the file is never corrupted; a power cut may lose the last commits before a
            # checkpoint. FULL syncs the WAL on every commit. See docs/decisions (SQLite durability).
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self._executor.call(fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    @staticmethod
    def _table(table: str) -> str:
        if table not in keys.TABLES:
            raise ValueError(f"unknown table {table!r}")
        return table

    # --- schema -------------------------------------------------------------------------------

    def _create_tables(self) -> None:
        conn = self._connection()
        index_columns = [col for spec in keys.INDEXES.values() for col in (spec.pk_attr, spec.sk_attr)]
        for table in keys.TABLES:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (pk TEXT NOT NULL, sk TEXT NOT NULL,"
                f" {', '.join(f'{col} TEXT' for col in index_columns)},"
                " expires_at REAL, body TEXT NOT NULL, PRIMARY KEY (pk, sk)) WITHOUT ROWID"
            )
            existing = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for col in index_columns:
                if col not in existing:  # a file made before this index existed
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {col} TEXT")
            for spec in keys.INDEXES.values():
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {table}_{spec.name} ON {table}"
                    f" ({spec.pk_attr}, {spec.sk_attr}, pk, sk) WHERE {spec.pk_attr} IS NOT NULL"
                )
        self._tables_ready = True

    async def create_tables(self) -> None:
        await self._run(self._create_tables)

    def _ready(self) -> sqlite3.Connection:
        if not self._tables_ready:
            self._create_tables()
        return self._connection()

    # --- reads --------------------------------------------------------------------------------

    def _inline(self) -> sqlite3.Connection | None:
        """The calling thread's read connection, when this read may run in place (see above)."""
        if not self.inline_reads or not self._tables_ready or self._closing:
            return None
        reader = self._reader
        if reader is None:
            reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            reader.execute("PRAGMA busy_timeout=0")  # never wait on the event loop's thread
            reader.execute("PRAGMA query_only=ON")
            self._reader, self._reader_thread = reader, threading.get_ident()
        elif self._reader_thread != threading.get_ident():
            return None
        return reader

    def _read_inline(
        self, read: Callable[[sqlite3.Connection], T], on_thread: Callable[[], Awaitable[T]]
    ) -> Awaitable[T]:
        """`read` on this thread's read connection, answered at once (an awaitable already done),
        or `on_thread()` when the read must go to the store thread."""
        reader = self._inline()
        if reader is not None:
            try:
                result = read(reader)
            except sqlite3.OperationalError:  # busy, or a table not there yet: the store thread decides
                pass
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite: {exc}") from exc
            else:
                done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
                done.set_result(result)
                return done
        return on_thread()

    def _read(self, table: str, key: Key, conn: sqlite3.Connection | None = None) -> Item | None:
        row = (
            (conn or self._ready())
            .execute(
                f"SELECT body, expires_at FROM {self._table(table)} WHERE pk=? AND sk=?",  # noqa: S608
                (key["pk"], key["sk"]),
            )
            .fetchone()
        )
        if row is None:
            return None
        item = _loads(row[0])
        # Only a row with a TTL can have expired; the item's own `expires_at` decides, exactly.
        return item if row[1] is None or is_live(item, time.time()) else None

    def _get(self, table: str, key: Key, consistent: bool) -> Awaitable[Item | None]:
        self._table(table)
        return self._read_inline(lambda conn: self._read(table, key, conn), lambda: self._run(self._read, table, key))

    def _read_many(self, table: str, keys_: Sequence[Key], conn: sqlite3.Connection | None = None) -> list[Item]:
        return [item for item in (self._read(table, key, conn) for key in keys_) if item is not None]

    def _batch_get(self, table: str, keys: list[Key]) -> Awaitable[list[Item]]:
        self._table(table)
        return self._read_inline(
            lambda conn: self._read_many(table, keys, conn), lambda: self._run(self._read_many, table, keys)
        )

    def _read_query(self, query: Query, conn: sqlite3.Connection | None = None) -> Page:
        table = self._table(query.table)
        pk, sk, index, cursor, descending = query.pk, query.sk, query.index, query.cursor, query.descending
        pk_col, sk_col, numeric = query.pk_attr, query.sk_attr, query.numeric
        order_cols = ["sk"] if index is None else [sk_col, "pk", "sk"]

        def col_value(value: Any) -> Any:
            return encode_number_key(value) if numeric else value

        where = [f"{pk_col} = ?"]
        params: list[Any] = [pk]
        if sk is not None:
            if sk.op == "begins_with":
                # A key range, not a filter: the rows read are the prefix's, however many other
                # items the partition holds (a user's holdings next to 100,000 ledger entries).
                where.append(f"{sk_col} >= ?")
                params.append(sk.value)
                end = prefix_end(sk.value)
                if end is not None:
                    where.append(f"{sk_col} < ?")
                    params.append(end)
            elif sk.op == "between":
                where.append(f"{sk_col} BETWEEN ? AND ?")
                params += [col_value(sk.value), col_value(sk.high)]
            elif sk.op in SORT_KEY_COMPARISONS:
                where.append(f"{sk_col} {sk.op} ?")
                params.append(col_value(sk.value))
        if cursor is not None:
            last = decode_cursor(cursor)
            last_values = [col_value(last.get(sk_col)) if index else last["sk"]]
            if index is not None:
                last_values += [last["pk"], last["sk"]]
            cmp = "<" if descending else ">"
            where.append(f"({', '.join(order_cols)}) {cmp} ({', '.join('?' * len(order_cols))})")
            params += last_values
        direction = "DESC" if descending else "ASC"
        order = ", ".join(f"{col} {direction}" for col in order_cols)
        now = time.time()
        where.append("(expires_at IS NULL OR expires_at > ?)")
        params.append(now)
        sql = f"SELECT body, expires_at FROM {table} WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"  # noqa: S608
        params.append(query.limit + 1)
        rows = (conn or self._ready()).execute(sql, params).fetchall()
        items: list[Item] = []
        for body, expires in rows:
            item = _loads(body)
            if expires is None or is_live(item, now):  # the SQL filter compares floats; decide exactly
                items.append(item)
        return query.page(items)

    def _query(self, query: Query) -> Awaitable[Page]:
        self._table(query.table)
        return self._read_inline(lambda conn: self._read_query(query, conn), lambda: self._run(self._read_query, query))

    # --- writes -------------------------------------------------------------------------------

    def _apply(self, conn: sqlite3.Connection, ops: Sequence[Op]) -> None:
        """Check the conditions of `ops` and write them, inside the caller's transaction."""
        now = time.time()
        # A put of a new item (`NotExists`) needs no read: the primary key refuses a duplicate,
        # and only then is the existing row read (it may have expired). Every other op reads
        # its item and checks its condition first. Writes go in op order, so the first
        # failing op is the one reported, as long as no new item's key is taken (ids are ULIDs).
        current: list[Item | None] = []
        for index, op in enumerate(ops):
            if isinstance(op, Put) and isinstance(op.condition, NotExists):
                current.append(None)
                continue
            row = conn.execute(
                f"SELECT body FROM {op.table} WHERE pk=? AND sk=?",  # noqa: S608
                (op.key["pk"], op.key["sk"]),
            ).fetchone()
            current.append(check_condition(index, op, _loads(row[0]) if row is not None else None, now))
        for index, (op, item) in enumerate(zip(ops, current, strict=True)):
            if isinstance(op, Put):
                if isinstance(op.condition, NotExists):
                    self._insert_new(conn, index, op, now)
                else:
                    self._write(conn, op.table, op.item)
            elif isinstance(op, Update):
                self._write(conn, op.table, apply_update(item, op))
            elif isinstance(op, Delete):
                conn.execute(
                    f"DELETE FROM {op.table} WHERE pk=? AND sk=?",  # noqa: S608
                    (op.key["pk"], op.key["sk"]),
                )
            elif not isinstance(op, Check):
                raise TypeError(f"not an op: {op!r}")

    def _apply_planned(self, conn: sqlite3.Connection, planned: _Planned) -> None:
        """Read the plan's item and apply the ops it builds, inside the caller's transaction."""
        row = conn.execute(
            f"SELECT body FROM {planned.table} WHERE pk=? AND sk=?",  # noqa: S608
            (planned.key["pk"], planned.key["sk"]),
        ).fetchone()
        item = _loads(row[0]) if row is not None else None
        ops = list(planned.plan(item if is_live(item, time.time()) else None))
        check_ops(ops)
        for op in ops:
            self._table(op.table)
        self._apply(conn, ops)

    def _apply_queued(self, conn: sqlite3.Connection, ops: Sequence[Op], planned: _Planned | None) -> None:
        if planned is None:
            self._apply(conn, ops)
        else:
            self._apply_planned(conn, planned)

    def _transact_alone(self, ops: Sequence[Op], planned: _Planned | None = None) -> None:
        """One transaction in its own `BEGIN IMMEDIATE ... COMMIT`."""
        conn = self._ready()
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._apply_queued(conn, ops, planned)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _transact_together(self, batch: Sequence[_Queued]) -> None:
        """Several transactions in one `BEGIN IMMEDIATE ... COMMIT`, a savepoint each.

        A transaction refused by a condition (or any error of its own that is not SQLite's) is
        rolled back to its savepoint and reported to its caller alone. An SQLite error rolls the
        whole batch back and is raised: nothing of the batch is committed.
        """
        conn = self._ready()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for queued in batch:
                conn.execute("SAVEPOINT tx")
                try:
                    self._apply_queued(conn, queued.ops, queued.planned)
                except sqlite3.Error:
                    raise
                except Exception as exc:
                    conn.execute("ROLLBACK TO tx")
                    queued.error = exc
                conn.execute("RELEASE tx")
            conn.execute("COMMIT")
        except BaseException:
            for queued in batch:
                queued.error = None
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        for queued in batch:
            queued.committed = queued.error is None

    def _run_batch(self, batch: Sequence[_Queued]) -> None:
        """On the store thread: commit `batch` together, or its transactions alone if that fails."""
        if len(batch) > 1:
            try:
                self._transact_together(batch)
                return
            except sqlite3.Error:
                pass  # rolled back: run each transaction alone, so each gets its own answer
        for queued in batch:
            try:
                self._transact_alone(queued.ops, queued.planned)
                queued.committed = True
            except sqlite3.Error as exc:
                queued.error = StoreError(f"sqlite: {exc}")
                queued.error.__cause__ = exc
            except Exception as exc:
                queued.error = exc

    def _drain(self) -> None:
        """On the store thread: run one batch of the queue, then schedule the next if any.

        One batch per executor job, so reads queued meanwhile run between batches.
        """
        with self._queue_lock:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
        try:
            # A caller that stopped waiting before its batch started does not see it applied.
            self._run_batch([queued for queued in batch if not queued.future.cancelled()])
        finally:
            self._schedule_next()  # first: a caller woken below finds the queue's state settled
            self._notify(batch)

    def _schedule_next(self) -> None:
        with self._queue_lock:
            if not self._queue:
                self._draining = False
                return
        self._submit_drain()

    def _submit_drain(self) -> None:
        try:
            self._executor.submit(self._drain)
        except RuntimeError:  # the store was closed: fail what is still queued
            with self._queue_lock:
                stranded = list(self._queue)
                self._queue.clear()
                self._draining = False
            self._notify(stranded)

    @staticmethod
    def _notify(batch: Sequence[_Queued]) -> None:
        """Wake each caller's loop once for the whole batch."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Queued]] = {}
        for queued in batch:
            by_loop.setdefault(queued.loop, []).append(queued)
        for loop, queued_on_loop in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting there
                loop.call_soon_threadsafe(_settle, queued_on_loop)

    def _insert_new(self, conn: sqlite3.Connection, index: int, op: Put, now: float) -> None:
        try:
            conn.execute(_INSERT_NEW_SQL[op.table], _columns(op.item))
        except sqlite3.IntegrityError:
            row = conn.execute(
                f"SELECT body FROM {op.table} WHERE pk=? AND sk=?",  # noqa: S608
                (op.key["pk"], op.key["sk"]),
            ).fetchone()
            if row is not None and is_live(_loads(row[0]), now):
                raise ConditionFailed(index) from None
            self._write(conn, op.table, op.item)  # the old item had expired

    @staticmethod
    def _write(conn: sqlite3.Connection, table: str, item: Item) -> None:
        conn.execute(_INSERT_SQL[table], _columns(item))

    async def _transact(self, ops: list[Op], token: str | None) -> None:
        for op in ops:
            self._table(op.table)
        await self._enqueue(ops, None)

    async def transact_planned(self, table: str, key: Key, plan: Plan) -> None:
        """`PlannedTransactions`: the plan runs on the store thread, inside the transaction (in a
        group commit, inside its own savepoint), so what it read is what its ops apply to."""
        self._table(table)
        await self._enqueue([], _Planned(table, dict(key), plan))

    async def _enqueue(self, ops: list[Op], planned: _Planned | None) -> None:
        if not self.group_commit:
            await self._run(self._transact_alone, ops, planned)
            return
        loop = asyncio.get_running_loop()
        queued = _Queued(ops, loop, loop.create_future(), planned)
        with self._queue_lock:
            self._queue.append(queued)
            schedule, self._draining = not self._draining, True
        if schedule:
            self._submit_drain()
        await queued.future

    # --- life cycle ---------------------------------------------------------------------------

    def _ping(self) -> None:
        self._ready().execute("SELECT 1").fetchone()

    async def ping(self) -> None:
        await self._run(self._ping)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        self._closing = True  # reads from now on go to the store thread, which refuses them once shut down
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        await self._run(self._close)
        self._executor.shutdown()
