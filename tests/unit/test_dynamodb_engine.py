"""The DynamoDB engine without a server: expressions, number markers, retries, paging, STS.

The conformance suite runs the engine against DynamoDB Local; these tests pin what a local server
cannot show (conflicts, throttling, STS) and the pure parts (expression compilation).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from cnop.common.config import Settings
from cnop.common.database import keys
from cnop.common.database.dynamodb import (
    MARKER_PREFIX,
    AssumeRole,
    DynamoDBStore,
    Expression,
    RetryPolicy,
    decode_item,
    encode_item,
    role_credentials,
)
from cnop.common.database.store import (
    And,
    AttrExists,
    AttrNotExists,
    Check,
    Delete,
    Eq,
    Exists,
    Ge,
    InvalidCursor,
    Lt,
    Ne,
    Not,
    NotExists,
    Op,
    Or,
    Put,
    SortKey,
    Update,
    encode_cursor,
)
from cnop.common.exceptions import ConditionFailed, StoreError, TransactionConflict

T = keys.USERS
NOW = 1_700_000_000.0


def k(pk: str, sk: str) -> dict[str, str]:
    return {"pk": pk, "sk": sk}


def resolve(expression: str, expr: Expression) -> str:
    """The expression with its placeholders replaced, for readable assertions."""
    text = re.sub(r"#n\d+", lambda m: expr.names[m.group()], expression)
    return re.sub(r":v\d+", lambda m: _show(expr.values[m.group()]), text)


def _show(value: dict[str, Any]) -> str:
    ((kind, inner),) = value.items()
    return f"{kind}:{inner}"


# --- condition compilation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (Exists(), "(attribute_exists(pk) AND NOT (expires_at <= N:1700000000.0))"),
        (NotExists(), "(attribute_not_exists(pk) OR expires_at <= N:1700000000.0)"),
        (AttrExists("a"), "(attribute_exists(a) AND NOT (expires_at <= N:1700000000.0))"),
        (AttrNotExists("a"), "(attribute_not_exists(a) OR expires_at <= N:1700000000.0)"),
        (Eq("status", "queued"), "(status = S:queued AND NOT (expires_at <= N:1700000000.0))"),
        (
            Ne("n", Decimal("1.50")),
            "(attribute_type(n, S:N) AND n <> N:1.50 AND NOT (expires_at <= N:1700000000.0))",
        ),
        (Ge("available", Decimal("10.00")), "(available >= N:10.00 AND NOT (expires_at <= N:1700000000.0))"),
        (Lt("name", "m"), "(name < S:m AND NOT (expires_at <= N:1700000000.0))"),
        (Eq("flag", True), "(flag = BOOL:True AND NOT (expires_at <= N:1700000000.0))"),
        (Eq("nothing", None), "(nothing = NULL:True AND NOT (expires_at <= N:1700000000.0))"),
    ],
)
def test_conditions_compile_with_ttl_semantics(condition: Any, expected: str) -> None:
    expr = Expression(NOW)
    assert resolve(expr.condition(condition), expr) == expected


def test_every_name_and_value_is_a_placeholder() -> None:
    expr = Expression(NOW)
    compiled = expr.condition(
        And(Eq("status", "queued"), Or(AttrNotExists("total"), Ge("total", 5)), Not(Eq("name", "x")))
    )
    assert not re.search(r"\b(status|total|name|expires_at|queued)\b", compiled)
    assert set(re.findall(r"#n\d+", compiled)) == set(expr.names)
    assert set(re.findall(r":v\d+", compiled)) == set(expr.values)
    # one placeholder per distinct name and value
    assert sorted(expr.names.values()) == sorted({"status", "total", "name", "expires_at"})
    assert len(expr.values) == len({repr(v) for v in expr.values.values()})


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.text(max_size=8)
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.decimals(allow_nan=False, allow_infinity=False, places=None),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@given(_VALUES)
@settings(max_examples=300, deadline=None)
def test_serialize_is_boto3s_type_serializer_for_the_common_types(value: Any) -> None:
    from boto3.dynamodb.types import TypeSerializer

    from cnop.common.database.dynamodb import serialize

    try:
        expected: Any = TypeSerializer().serialize(value)
    except ArithmeticError:
        with pytest.raises(ValueError, match="out of DynamoDB's range"):
            serialize(value)
        return
    except TypeError:
        with pytest.raises(TypeError):
            serialize(value)
        return
    assert serialize(value) == expected


def test_serialize_hands_other_types_to_boto3_and_refuses_floats() -> None:
    from cnop.common.database.dynamodb import serialize

    assert serialize({"a", "b"})["SS"] in (["a", "b"], ["b", "a"])
    assert serialize((Decimal("1.50"), "x")) == {"L": [{"N": "1.50"}, {"S": "x"}]}
    assert serialize(b"\x00") == {"B": b"\x00"}
    for bad in (1.5, Decimal("NaN"), Decimal("Infinity"), {"a": [0.1]}):
        with pytest.raises(TypeError):
            serialize(bad)
    with pytest.raises(ValueError, match="38 digits"):
        serialize(Decimal("1." + "1" * 40))


def test_equal_values_share_one_placeholder_whatever_their_type() -> None:
    expr = Expression(NOW)
    names = [expr.value(v) for v in ("1", Decimal("1"), "1", Decimal("1"), True, None, [1], {"a": 1}, [1])]
    assert names[0] == names[2] and names[1] == names[3] and names[6] == names[8]
    assert len(set(names)) == 6
    assert expr.values[names[0]] == {"S": "1"} and expr.values[names[1]] == {"N": "1"}


def test_boolean_combinators_nest_in_parentheses() -> None:
    expr = Expression(NOW)
    compiled = resolve(expr.condition(Not(Or(Eq("s", "b"), And()))), expr)
    assert compiled.startswith("(NOT ((s = S:b")
    assert "(attribute_not_exists(__exp) OR attribute_exists(__exp))" in compiled  # And() is true
    assert "(attribute_not_exists(__exp) AND attribute_exists(__exp))" in resolve(expr.condition(Or()), expr)


def test_ordering_comparisons_refuse_values_dynamodb_cannot_order() -> None:
    with pytest.raises(TypeError):
        Expression(NOW).condition(Lt("flag", True))
    with pytest.raises(TypeError):
        Expression(NOW).condition(Ge("x", 0.5))


def test_sort_key_conditions() -> None:
    expr = Expression(NOW)
    assert resolve(expr.sort_key("sk", SortKey.prefix("TXN#"), False), expr) == "begins_with(sk, S:TXN#)"
    assert resolve(expr.sort_key("gsi2sk", SortKey.between(1, Decimal("2.5")), True), expr) == (
        "gsi2sk BETWEEN N:1 AND N:2.5"
    )
    assert resolve(expr.sort_key("sk", SortKey.le("B"), False), expr) == "sk <= S:B"
    with pytest.raises(ValueError):
        expr.sort_key("gsi2sk", SortKey.prefix("1"), True)


def test_update_expression_sets_adds_removes_and_initialises() -> None:
    expr = Expression(NOW)
    op = Update(
        T,
        k("A", "1"),
        set={"a": "y", "price": Decimal("10.50"), "round": Decimal("1E+2")},
        add={"b": Decimal("-0.25"), "d": 2},
        remove=("c",),
        init={"created": "now", "fee": Decimal("0.00")},
    )
    compiled = resolve(expr.update(op), expr)
    assert compiled == (
        "SET a = S:y, price = N:10.50, __exp:price = NS:['-2'], round = N:1E+2, __exp+:round = N:2,"
        " b = if_not_exists(b, N:0) + N:-0.25, d = if_not_exists(d, N:0) + N:2,"
        " created = if_not_exists(created, S:now), fee = N:0.00, __exp:fee = NS:['-2']"
        " REMOVE __exp:a, __exp+:a, __exp+:price, __exp:round, __exp+:b, __exp+:d, c, __exp:c, __exp+:c"
        " ADD __exp:b NS:['-2']"
    )
    # the marked init value is set only under the guard that it is missing ...
    assert resolve(" AND ".join(expr.init_guard(op, frozenset())), expr) == "attribute_not_exists(fee)"
    # ... and left alone where it is present
    present = Expression(NOW)
    compiled = resolve(present.update(op, frozenset({"fee"})), present)
    assert "fee" not in compiled
    assert resolve(" AND ".join(present.init_guard(op, frozenset({"fee"}))), present) == "attribute_exists(fee)"


def test_an_empty_update_still_creates_the_item() -> None:
    expr = Expression(NOW)
    assert resolve(expr.update(Update(T, k("A", "1"))), expr) == "REMOVE __exp"


def test_update_refuses_floats_and_non_numeric_adds() -> None:
    with pytest.raises(TypeError):
        Expression(NOW).update(Update(T, k("A", "1"), set={"x": 0.1}))
    with pytest.raises(TypeError):
        Expression(NOW).update(Update(T, k("A", "1"), add={"x": True}))
    with pytest.raises(ValueError):
        Expression(NOW).update(Update(T, k("A", "1"), set={f"{MARKER_PREFIX}:x": 1}))


def test_none_index_keys_are_left_out_rather_than_indexed_as_null() -> None:
    assert "gsi2pk" not in encode_item({"pk": "A", "sk": "1", "gsi2pk": None, "x": None})
    expr = Expression(NOW)
    assert resolve(expr.update(Update(T, k("A", "1"), set={"gsi2pk": None})), expr) == (
        "REMOVE gsi2pk, __exp:gsi2pk, __exp+:gsi2pk"
    )


# --- numbers: DynamoDB drops trailing zeros, the store does not ----------------------------------


def dynamodb_normalises(value: Any) -> Any:
    """What DynamoDB does to the numbers of an attribute value: `1000.10` comes back `1000.1`."""
    if isinstance(value, dict):
        if set(value) == {"N"}:
            return {"N": format(Decimal(value["N"]).normalize(), "f")}
        return {name: dynamodb_normalises(inner) for name, inner in value.items()}
    if isinstance(value, list):
        return [dynamodb_normalises(inner) for inner in value]
    return value


def test_numbers_round_trip_with_their_exponents() -> None:
    item = {
        "pk": "A",
        "sk": "1",
        "amount": Decimal("1000.10"),
        "zero": Decimal("0.00"),
        "hundred": Decimal("1E+2"),
        "plain": Decimal("100"),
        "count": 3,
        "neg": Decimal("-5.50"),
        "tiny": Decimal("0.000000000000000001"),
        "nested": {"price": Decimal("65000.50"), "tags": ["x", Decimal("2.0")], "n": Decimal(1)},
        "list": [Decimal("1.5"), "s", Decimal("7.00")],
        "flag": True,
        "nothing": None,
    }
    stored = dynamodb_normalises(encode_item(item))
    assert stored["amount"] == {"N": "1000.1"}
    got = decode_item(stored)
    assert got == item
    assert {name: str(value) for name, value in got.items()} == {name: str(value) for name, value in item.items()}
    assert isinstance(got["count"], Decimal)
    assert not any(name.startswith(MARKER_PREFIX) for name in got)
    # only numbers that need one carry a marker
    markers = {name for name in stored if name.startswith(MARKER_PREFIX)}
    assert markers == {f"__exp:{n}" for n in ("amount", "zero", "neg", "nested", "list")} | {"__exp+:hundred"}


def decimals(max_exponent: int) -> st.SearchStrategy[Decimal]:
    return st.builds(
        lambda units, exponent: Decimal(units).scaleb(exponent),
        st.integers(min_value=-(10**12), max_value=10**12),
        st.integers(min_value=-8, max_value=max_exponent),
    )


@given(st.one_of(decimals(6), st.integers(min_value=-(10**20), max_value=10**20)))
@settings(max_examples=300, deadline=None)
def test_any_number_reads_back_as_written_with_its_exponent(number: Decimal | int) -> None:
    item = {"pk": "A", "sk": "1", "x": number, "in_list": [number], "text": "1.50"}
    got = decode_item(dynamodb_normalises(encode_item(item)))
    assert got == item
    assert str(got["x"]) == str(Decimal(number)) and str(got["in_list"][0]) == str(Decimal(number))


def run_update(stored: dict[str, Any], clause: str) -> None:
    """Apply a resolved `SET x = if_not_exists(x, 0) + v [, ...] REMOVE ... ADD m {e}` as DynamoDB would."""
    amount = Decimal(re.search(r"x = if_not_exists\(x, N:0\) \+ N:(\S+?),? ", clause + " ").group(1))  # type: ignore[union-attr]
    stored["x"] = dynamodb_normalises({"N": str(Decimal(stored["x"]["N"]) + amount)})
    for removed in re.findall(r"__exp\S*?:x", clause.split(" REMOVE ")[1].split(" ADD ")[0]):
        stored.pop(removed, None)
    if " ADD " in clause:
        name, value = re.fullmatch(r"(\S+) NS:\['(-?\d+)'\]", clause.split(" ADD ")[1]).groups()  # type: ignore[union-attr]
        stored[name] = {"NS": sorted(set(stored.get(name, {"NS": []})["NS"]) | {value})}


@settings(max_examples=300, deadline=None)
@given(start=decimals(max_exponent=3), adds=st.lists(decimals(max_exponent=0), max_size=6))
def test_add_keeps_the_exponent_sqlite_would(start: Decimal, adds: list[Decimal]) -> None:
    """A Put then `add`s read back as Decimal arithmetic (the SQLite engine) gives, trailing zeros
    and all: `SET x = if_not_exists(x, 0) + v`, `REMOVE __exp+:x`, `ADD __exp:x {exponent of v}`."""
    stored = dynamodb_normalises(encode_item({"pk": "A", "sk": "1", "x": start}))
    expected = start
    assert str(decode_item(stored)["x"]) == str(expected)
    for amount in adds:
        expr = Expression(NOW)
        run_update(stored, resolve(expr.update(Update(T, k("A", "1"), add={"x": amount})), expr))
        expected = Decimal(expected) + Decimal(amount)
    got = decode_item(stored)["x"]
    assert got == expected and str(got) == str(expected)


# --- a stub client --------------------------------------------------------------------------------


def client_error(code: str, operation: str = "TransactWriteItems", **extra: Any) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, **extra}, operation)


def cancelled(*codes: str, items: dict[int, dict[str, Any]] | None = None) -> ClientError:
    reasons: list[dict[str, Any]] = [{"Code": code} for code in codes]
    for index, item in (items or {}).items():
        reasons[index]["Item"] = item
    return client_error("TransactionCanceledException", CancellationReasons=reasons)


class StubClient:
    """Answers each call from a script: an exception to raise or a response to return."""

    def __init__(self, **scripts: list[Any]) -> None:
        self.scripts = scripts
        self.calls: dict[str, list[dict[str, Any]]] = {}

    def __getattr__(self, operation: str) -> Any:
        if operation.startswith("_") or operation not in self.scripts:
            raise AttributeError(operation)

        async def call(**params: Any) -> Any:
            self.calls.setdefault(operation, []).append(params)
            script = self.scripts[operation]
            outcome = script.pop(0) if len(script) > 1 else script[0]
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        return call


def stub_store(client: StubClient, attempts: int = 8) -> tuple[DynamoDBStore, list[float]]:
    store = DynamoDBStore("t", client=client, retry=RetryPolicy(max_attempts=attempts, base_delay=0.02, max_delay=1.0))
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    store._sleep = sleep
    return store, sleeps


OPS: list[Op] = [
    Put(T, {"pk": "U", "sk": "TXN#1", "amount": Decimal("-10.00")}),
    Update(T, k("U", "BAL"), add={"available": Decimal("-10.00")}, condition=Ge("available", Decimal("10.00"))),
]


# --- retries -------------------------------------------------------------------------------------


async def test_conflicts_and_throttling_are_retried_with_one_client_request_token() -> None:
    client = StubClient(
        transact_write_items=[
            cancelled("None", "TransactionConflict"),
            client_error("ThrottlingException"),
            cancelled("TransactionConflict", "None"),
            client_error("ProvisionedThroughputExceededException"),
            client_error("TransactionInProgressException"),
            {},
        ]
    )
    store, sleeps = stub_store(client)
    await store.transact(OPS)
    calls = client.calls["transact_write_items"]
    assert len(calls) == 6
    tokens = {call["ClientRequestToken"] for call in calls}
    assert len(tokens) == 1 and len(tokens.pop()) == 36
    assert all(call["TransactItems"] == calls[0]["TransactItems"] for call in calls)
    assert len(sleeps) == 5
    assert all(0 <= delay <= min(1.0, 0.02 * 2**n) for n, delay in enumerate(sleeps))


async def test_the_callers_token_is_passed_on_every_attempt() -> None:
    client = StubClient(transact_write_items=[cancelled("TransactionConflict", "None"), {}])
    store, _ = stub_store(client)
    await store.transact(OPS, token="order-123")
    assert [c["ClientRequestToken"] for c in client.calls["transact_write_items"]] == ["order-123"] * 2


async def test_a_token_too_long_for_dynamodb_is_hashed_stably() -> None:
    client = StubClient(transact_write_items=[{}])
    store, _ = stub_store(client)
    await store.transact(OPS, token="x" * 80)
    await store.transact(OPS, token="x" * 80)
    first, second = (c["ClientRequestToken"] for c in client.calls["transact_write_items"])
    assert first == second and len(first) == 36


async def test_conflicts_past_the_bound_raise_transaction_conflict() -> None:
    client = StubClient(transact_write_items=[cancelled("TransactionConflict", "None")])
    store, sleeps = stub_store(client, attempts=5)
    with pytest.raises(TransactionConflict):
        await store.transact(OPS)
    assert len(client.calls["transact_write_items"]) == 5
    assert len(sleeps) == 4
    assert len({c["ClientRequestToken"] for c in client.calls["transact_write_items"]}) == 1


async def test_throttling_past_the_bound_raises_transaction_conflict() -> None:
    client = StubClient(transact_write_items=[client_error("RequestLimitExceeded")])
    store, _ = stub_store(client, attempts=3)
    with pytest.raises(TransactionConflict):
        await store.transact(OPS)
    assert len(client.calls["transact_write_items"]) == 3


async def test_other_errors_are_store_errors_and_not_retried() -> None:
    client = StubClient(transact_write_items=[client_error("ValidationException")])
    store, _ = stub_store(client)
    with pytest.raises(StoreError) as err:
        await store.transact(OPS)
    assert not isinstance(err.value, ConditionFailed | TransactionConflict)
    assert len(client.calls["transact_write_items"]) == 1

    client = StubClient(transact_write_items=[cancelled("None", "ValidationError")])
    store, _ = stub_store(client)
    with pytest.raises(StoreError):
        await store.transact(OPS)
    assert len(client.calls["transact_write_items"]) == 1


# --- cancellation reasons -> op index ------------------------------------------------------------


async def test_the_first_failed_condition_names_the_op() -> None:
    ops: list[Op] = [
        Put(T, {"pk": "A", "sk": "1"}),
        Delete(T, k("A", "2"), Exists()),
        Check(T, k("A", "3"), Eq("status", "queued")),
        Put(T, {"pk": "A", "sk": "4"}, NotExists()),
    ]
    client = StubClient(
        transact_write_items=[cancelled("None", "None", "ConditionalCheckFailed", "ConditionalCheckFailed")]
    )
    store, _ = stub_store(client)
    with pytest.raises(ConditionFailed) as err:
        await store.transact(ops)
    assert err.value.index == 2
    assert len(client.calls["transact_write_items"]) == 1


async def test_a_condition_failure_beats_a_conflict_on_another_op() -> None:
    client = StubClient(transact_write_items=[cancelled("TransactionConflict", "ConditionalCheckFailed")])
    store, _ = stub_store(client)
    with pytest.raises(ConditionFailed) as err:
        await store.transact(OPS)
    assert err.value.index == 1


async def test_a_failed_update_condition_is_confirmed_on_the_returned_item() -> None:
    balance = encode_item({"pk": "U", "sk": "BAL", "available": Decimal("5.00")})
    client = StubClient(transact_write_items=[cancelled("None", "ConditionalCheckFailed", items={1: balance})])
    store, _ = stub_store(client)
    with pytest.raises(ConditionFailed) as err:
        await store.transact(OPS)
    assert err.value.index == 1
    assert (
        client.calls["transact_write_items"][0]["TransactItems"][1]["Update"]["ReturnValuesOnConditionCheckFailure"]
        == "ALL_OLD"
    )


async def test_an_update_of_an_expired_item_is_resent_as_a_put_of_a_fresh_item() -> None:
    expired = encode_item({"pk": "U", "sk": "CNT", "n": 41, "old": "x", "expires_at": 1})
    op = Update(T, k("U", "CNT"), add={"n": 1}, set={"expires_at": 2**40})
    client = StubClient(transact_write_items=[cancelled("ConditionalCheckFailed", items={0: expired}), {}])
    store, _ = stub_store(client)
    await store.transact([op], token="tok")
    first, second = client.calls["transact_write_items"]
    assert "Update" in first["TransactItems"][0]
    put = second["TransactItems"][0]["Put"]
    assert decode_item(put["Item"]) == {"pk": "U", "sk": "CNT", "n": Decimal(1), "expires_at": Decimal(2**40)}
    assert "attribute_not_exists" in put["ConditionExpression"]
    assert first["ClientRequestToken"] == "tok" and second["ClientRequestToken"] != "tok"


async def test_init_with_a_marked_number_switches_when_the_attribute_exists() -> None:
    current = encode_item({"pk": "A", "sk": "1", "fee": Decimal("3")})
    op = Update(T, k("A", "1"), set={"a": 1}, init={"fee": Decimal("0.00")})
    client = StubClient(transact_write_items=[cancelled("ConditionalCheckFailed", items={0: current}), {}])
    store, _ = stub_store(client)
    await store.transact([op])
    first, second = (c["TransactItems"][0]["Update"] for c in client.calls["transact_write_items"])
    assert "attribute_not_exists(" in first["ConditionExpression"]
    assert "fee" in first["ExpressionAttributeNames"].values()
    assert "fee" not in second["UpdateExpression"]  # placeholders only; and fee is not assigned
    assert "__exp:fee" not in second["ExpressionAttributeNames"].values()


# --- reads ---------------------------------------------------------------------------------------


def raw(pk: str, sk: str, **attrs: Any) -> dict[str, Any]:
    return encode_item({"pk": pk, "sk": sk, **attrs})


async def test_query_reads_on_past_expired_items_to_fill_a_page() -> None:
    live = [raw("P", f"{i:02d}", i=i) for i in range(6)]
    dead = [raw("P", f"x{i}", expires_at=1) for i in range(4)]
    client = StubClient(
        query=[
            {"Items": [live[0], dead[0], dead[1]], "LastEvaluatedKey": {"pk": {"S": "P"}, "sk": {"S": "x1"}}},
            {"Items": [dead[2], live[1], live[2]], "LastEvaluatedKey": {"pk": {"S": "P"}, "sk": {"S": "02"}}},
            {"Items": [live[3], dead[3]], "LastEvaluatedKey": {"pk": {"S": "P"}, "sk": {"S": "x3"}}},
        ]
    )
    store, _ = stub_store(client)
    page = await store.query(T, "P", limit=3)
    assert [item["i"] for item in page.items] == [0, 1, 2]
    assert page.next_cursor == encode_cursor({"pk": "P", "sk": "02"})
    calls = client.calls["query"]
    assert len(calls) == 3 and calls[0]["Limit"] == 4 and calls[0]["ConsistentRead"] is True
    assert "ExclusiveStartKey" not in calls[0]
    assert calls[1]["ExclusiveStartKey"] == {"pk": {"S": "P"}, "sk": {"S": "x1"}}


async def test_query_without_more_items_has_no_cursor() -> None:
    client = StubClient(
        query=[{"Items": [raw("P", "1"), raw("P", "2")], "LastEvaluatedKey": {"pk": {"S": "P"}}}, {"Items": []}]
    )
    store, _ = stub_store(client)
    page = await store.query(T, "P", limit=2)
    assert len(page.items) == 2 and page.next_cursor is None


async def test_index_query_cursor_carries_the_index_keys() -> None:
    items = [raw(f"USER#{i}", "ORDER#1", gsi2pk="TRIG", gsi2sk=Decimal("10.5")) for i in range(3)]
    client = StubClient(query=[{"Items": items}])
    store, _ = stub_store(client)
    page = await store.query(T, "TRIG", index="gsi2", limit=2, descending=True, consistent=True)
    call = client.calls["query"][0]
    assert call["IndexName"] == "gsi2" and "ConsistentRead" not in call and call["ScanIndexForward"] is False
    assert page.next_cursor is not None
    await store.query(T, "TRIG", index="gsi2", limit=2, cursor=page.next_cursor)
    assert client.calls["query"][1]["ExclusiveStartKey"] == {
        "pk": {"S": "USER#1"},
        "sk": {"S": "ORDER#1"},
        "gsi2pk": {"S": "TRIG"},
        "gsi2sk": {"N": "10.5"},
    }


async def test_cursors_of_another_partition_or_shape_are_invalid() -> None:
    store, _ = stub_store(StubClient(query=[{"Items": []}]))
    with pytest.raises(InvalidCursor):
        await store.query(T, "P", cursor=encode_cursor({"pk": "Q", "sk": "1"}))
    with pytest.raises(InvalidCursor):
        await store.query(T, "P", index="gsi2", cursor=encode_cursor({"pk": "P", "sk": "1"}))
    with pytest.raises(InvalidCursor):
        await store.query(
            T, "P", index="gsi2", cursor=encode_cursor({"pk": "A", "sk": "1", "gsi2pk": "P", "gsi2sk": "x"})
        )
    with pytest.raises(ValueError):
        await store.query(T, "P", limit=0)


async def test_batch_get_retries_unprocessed_keys_and_drops_expired() -> None:
    client = StubClient(
        batch_get_item=[
            {
                "Responses": {"t-users": [raw("A", "1", v=1), raw("A", "2", expires_at=1)]},
                "UnprocessedKeys": {"t-users": {"Keys": [{"pk": {"S": "A"}, "sk": {"S": "3"}}]}},
            },
            {"Responses": {"t-users": [raw("A", "3", v=3)]}, "UnprocessedKeys": {}},
        ]
    )
    store, sleeps = stub_store(client)
    got = await store.batch_get(T, [k("A", "1"), k("A", "2"), k("A", "3"), k("A", "1")])
    assert sorted(item["sk"] for item in got) == ["1", "3"]
    first, second = client.calls["batch_get_item"]
    assert len(first["RequestItems"]["t-users"]["Keys"]) == 3  # duplicates dropped
    assert second["RequestItems"] == {"t-users": {"Keys": [{"pk": {"S": "A"}, "sk": {"S": "3"}}]}}
    assert len(sleeps) == 1


async def test_create_tables_tolerates_existing_tables_and_missing_ttl_support() -> None:
    client = StubClient(
        create_table=[client_error("ResourceInUseException", "CreateTable")],
        describe_table=[{"Table": {"TableStatus": "ACTIVE", "GlobalSecondaryIndexes": [{"IndexStatus": "ACTIVE"}]}}],
        describe_time_to_live=[client_error("UnknownOperationException", "DescribeTimeToLive")],
    )
    store, _ = stub_store(client)
    await store.create_tables()
    specs = client.calls["create_table"]
    assert sorted(spec["TableName"] for spec in specs) == ["t-inventory", "t-orders", "t-users"]
    spec = specs[0]
    assert spec["BillingMode"] == "PAY_PER_REQUEST"
    assert {"AttributeName": "gsi2sk", "AttributeType": "N"} in spec["AttributeDefinitions"]
    assert {i["IndexName"] for i in spec["GlobalSecondaryIndexes"]} == set(keys.INDEXES) >= {"gsi1", "gsi2"}
    assert all(i["Projection"] == {"ProjectionType": "ALL"} for i in spec["GlobalSecondaryIndexes"])


async def test_ping_fails_as_a_store_error() -> None:
    store, _ = stub_store(StubClient(describe_table=[client_error("ResourceNotFoundException", "DescribeTable")]))
    with pytest.raises(StoreError):
        await store.ping()


# --- STS role assumption --------------------------------------------------------------------------


class StubSts:
    """An STS that hands out numbered credentials valid for `lifetime` from the clock's now."""

    def __init__(self, clock: list[datetime], lifetime: timedelta = timedelta(hours=1)) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.requests: list[dict[str, Any]] = []

    async def assume_role(self, **params: Any) -> dict[str, Any]:
        self.requests.append(params)
        n = len(self.requests)
        return {
            "Credentials": {
                "AccessKeyId": f"ASIA{n}",
                "SecretAccessKey": f"secret{n}",
                "SessionToken": f"token{n}",
                "Expiration": self.clock[0] + self.lifetime,
            }
        }

    @asynccontextmanager
    async def client(self) -> AsyncIterator[StubSts]:
        yield self


async def test_role_credentials_are_fetched_lazily_and_refreshed_before_expiry() -> None:
    clock = [datetime(2026, 1, 1, 12, 0, tzinfo=UTC)]
    sts = StubSts(clock)
    credentials = role_credentials(
        AssumeRole(sts.client, "arn:aws:iam::123456789012:role/cnop", "cnop-test"), time_fetcher=lambda: clock[0]
    )
    assert sts.requests == []
    first = await credentials.get_frozen_credentials()
    assert (first.access_key, first.secret_key, first.token) == ("ASIA1", "secret1", "token1")
    assert sts.requests == [
        {"RoleArn": "arn:aws:iam::123456789012:role/cnop", "RoleSessionName": "cnop-test", "DurationSeconds": 3600}
    ]
    clock[0] += timedelta(minutes=30)
    assert (await credentials.get_frozen_credentials()).access_key == "ASIA1"
    assert len(sts.requests) == 1
    clock[0] += timedelta(minutes=25)  # 5 minutes before expiry: must refresh
    assert (await credentials.get_frozen_credentials()).access_key == "ASIA2"
    assert len(sts.requests) == 2


class Captured(Exception):
    pass


async def test_from_settings_signs_requests_with_the_assumed_role(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    sts = StubSts([datetime.now(UTC)])
    settings = Settings(dynamodb_table_prefix="prod", aws_role_arn="arn:aws:iam::1:role/r", aws_role_session_name="s")
    store = DynamoDBStore.from_settings(settings, sts_client=sts.client)
    assert store.table_name(keys.ORDERS) == "prod-orders"
    client = await store._client()
    seen: dict[str, str] = {}

    def capture(request: Any, **_: Any) -> None:
        seen.update(
            {
                name: value.decode() if isinstance(value, bytes) else str(value)
                for name, value in request.headers.items()
            }
        )
        seen["url"] = request.url
        raise Captured  # never reaches the network

    client.meta.events.register("before-send.dynamodb", capture)
    try:
        with pytest.raises(Captured):
            await store.get(keys.USERS, k("A", "1"))
    finally:
        await store.close()
    assert "Credential=ASIA1/" in seen["Authorization"]
    assert seen["X-Amz-Security-Token"] == "token1"
    assert "eu-west-1" in seen["url"]
    assert sts.requests[0]["RoleArn"] == "arn:aws:iam::1:role/r"


def test_from_settings_without_a_role_uses_the_default_chain() -> None:
    store = DynamoDBStore.from_settings(Settings(dynamodb_table_prefix="cnop-dev"))
    assert store.table_name(keys.INVENTORY) == "cnop-dev-inventory"
    with pytest.raises(ValueError):
        store.table_name("nope")
