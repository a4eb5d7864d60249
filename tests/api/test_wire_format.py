"""Decimal fields on the wire and the one input number grammar (decision 0008).

- Every Decimal field of every `/api/v1` response is a string in the OpenAPI document, every
  numeric request field is "number or pattern string", integers stay integers.
- Random values within each field's scale and bounds go in (as strings, as JSON numbers, in
  exponent form) and come back unchanged.
- The grammar's edge cases are accepted or refused exactly as the rule says, and a refusal
  stores nothing.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import AsyncIterator
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Any

import pytest
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from cnop.common import jsonio
from cnop.common.entities.balance import Balance, BalanceTransaction
from cnop.common.money import INPUT_PATTERN, plain_text, usd_text
from tests.conftest import StoreFactory
from tests.support.api import Api, assert_problem, funded_user, ledger, open_api, snapshot
from tests.support.wire import exact, read, usd

D = Decimal
HYPOTHESIS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


@pytest.fixture
async def roomy(store_factory: StoreFactory) -> AsyncIterator[Api]:
    """An app whose daily limits never get in the way of many deposits."""
    built, lifespan = await open_api(
        store_factory, daily_deposit_limit=D("1e15"), daily_withdraw_limit=D("1e15"), max_price_age_seconds=86400
    )
    yield built
    await built.client.aclose()
    await lifespan.__aexit__(None, None, None)


def post_raw(api: Api, path: str, text: str, headers: dict[str, str]) -> Any:
    return api.client.post(path, content=text.encode(), headers={**headers, "Content-Type": "application/json"})


# --- the OpenAPI document --------------------------------------------------------------------


def _inner_types(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, dict, tuple):
        return [t for arg in typing.get_args(annotation) for t in _inner_types(arg)]
    if origin is typing.Annotated:
        return _inner_types(typing.get_args(annotation)[0])
    return [] if annotation is type(None) else [annotation]


def _alternatives(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-null alternatives of a property schema (anyOf flattened, arrays to their items)."""
    if "anyOf" in schema:
        return [a for alt in schema["anyOf"] for a in _alternatives(alt)]
    if schema.get("type") == "array":
        return _alternatives(schema["items"])
    return [] if schema.get("type") == "null" else [schema]


def _component(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return schema


def _walk(doc: dict[str, Any], model: type[BaseModel], schema: dict[str, Any], request: bool, found: dict[str, list[str]]) -> None:
    for name, field in model.model_fields.items():
        prop = schema["properties"][field.alias or name]
        where = f"{model.__name__}.{name}"
        for kind in _inner_types(field.annotation):
            alternatives = _alternatives(prop)
            if kind is Decimal:
                if request:
                    assert sorted(a["type"] for a in alternatives) == ["number", "string"], where
                    assert next(a for a in alternatives if a["type"] == "string")["pattern"] == INPUT_PATTERN, where
                else:
                    assert alternatives and all(a["type"] == "string" and a["pattern"] for a in alternatives), where
                found["decimal"].append(where)
            elif kind is int:
                assert alternatives and all(a["type"] == "integer" for a in alternatives), where
                found["int"].append(where)
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                (ref,) = {a["$ref"] for a in alternatives if "$ref" in a}
                _walk(doc, kind, _component(doc, ref), request, found)
            for alternative in alternatives:
                assert alternative.get("type") != "number" or (request and kind is Decimal), where


async def test_openapi_types_every_decimal_field_as_a_string_and_every_input_as_number_or_pattern(api: Api) -> None:
    r = await api.client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = read(r)
    responses: dict[str, list[str]] = {"decimal": [], "int": []}
    requests: dict[str, list[str]] = {"decimal": [], "int": []}
    for route in api.app.routes:
        if not isinstance(route, APIRoute) or not route.path.startswith("/api/v1"):
            continue
        for method in route.methods:
            operation = doc["paths"][route.path][method.lower()]
            if route.response_model is not None:
                (status,) = [s for s in operation["responses"] if s.startswith("2")]
                ref = operation["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                _walk(doc, route.response_model, _component(doc, ref), False, responses)
            if route.body_field is not None:
                body_model = route.body_field.field_info.annotation
                ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                _walk(doc, body_model, _component(doc, ref), True, requests)
    # The walk saw the fields that matter (so it cannot pass by seeing nothing).
    for where in (
        "BalanceResponse.current_balance", "MoneyMovementResponse.amount", "LedgerEntry.available_change",
        "OrderResponse.price", "OrderResponse.price_bound", "OrderResponse.held_amount", "OrderResponse.total_amount",
        "AssetTransaction.total", "PortfolioAsset.percentage", "CashSummary.total", "AssetBalance.average_price",
        "AssetData.price_usd", "AssetData.market_cap", "AssetData.total_volume_24h",
        "AssetData.price_change_percentage_24h", "AssetDetailData.price_change_percentage_30d",
        "AssetDetailData.min_quantity", "PricePoint.price", "PriceSetResponse.price",
    ):
        assert where in responses["decimal"], where
    for where in ("AssetListResponse.total_count", "AssetData.market_cap_rank", "TokenResponse.expires_in",
                  "AssetDetailData.scale", "PriceHistory.interval_seconds"):
        assert where in responses["int"], where
    assert set(requests["decimal"]) == {
        "AmountRequest.amount", "OrderCreate.quantity", "OrderCreate.price", "OrderCreate.stop_price",
        "OrderCreate.trail_amount", "OrderCreate.trail_percent", "PriceSet.price",
    }


# --- round trip ------------------------------------------------------------------------------


def _texts(value: Decimal) -> st.SearchStrategy[str]:
    """Ways a client may write `value`: a string, a JSON number, a JSON number with an exponent."""
    plain = format(value, "f")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    mantissa = "".join(map(str, digits))
    scientific = f"{mantissa[0]}.{mantissa[1:]}e{exponent + len(mantissa) - 1}" if len(mantissa) > 1 else f"{mantissa}e{exponent}"
    forms = [f'"{plain}"', plain, f'"{plain}00"' if "." in plain else f'"{plain}.0"']
    if len(scientific) <= 40:
        forms.append(scientific)
    return st.sampled_from(forms)


@st.composite
def amounts(draw: st.DrawFn) -> tuple[Decimal, str]:
    value = draw(st.decimals(min_value=D("0.01"), max_value=D("1000000"), places=2))
    return value, draw(_texts(value))


@HYPOTHESIS
@given(case=amounts())
async def test_deposit_amounts_round_trip_exactly(roomy: Api, case: tuple[Decimal, str]) -> None:
    api = roomy
    value, text = case
    username, headers = await api.register()
    r = await post_raw(api, "/api/v1/balance/deposit", f'{{"amount": {text}}}', headers)
    assert r.status_code == 201, (text, r.text)
    body = read(r)
    assert body["amount"] == usd_text(value) and body["balance"] == usd_text(value)
    assert usd(body["amount"]) == value
    stored = await api.container.balance_dao.find_balance(username)
    assert stored is not None and stored.available == value
    r = await post_raw(api, "/api/v1/balance/withdraw", f'{{"amount": {text}}}', headers)
    assert r.status_code == 201, (text, r.text)
    assert read(r)["amount"] == usd_text(value) and read(r)["balance"] == "0.00"
    entries = read(await api.client.get("/api/v1/balance/transactions", headers=headers))["transactions"]
    assert [(e["transaction_type"], e["amount"], e["available_change"]) for e in entries] == [
        ("withdraw", usd_text(value), usd_text(-value)),
        ("deposit", usd_text(value), usd_text(value)),
    ]


@st.composite
def admin_prices(draw: st.DrawFn) -> tuple[Decimal, str]:
    value = draw(st.decimals(min_value=D("0.00000001"), max_value=D("1000000"), places=8))
    return value, draw(_texts(value))


@HYPOTHESIS
@given(case=admin_prices())
async def test_admin_prices_round_trip_exactly(roomy: Api, case: tuple[Decimal, str]) -> None:
    api = roomy
    value, text = case
    admin = await api.admin()
    r = await post_raw(api, "/api/v1/admin/prices", f'{{"asset_id": "ETH", "price": {text}}}', admin)
    assert r.status_code == 200, (text, r.text)
    assert read(r) == {"asset_id": "ETH", "price": plain_text(value), "source": "manual"}
    detail = read(await api.client.get("/api/v1/inventory/assets/ETH"))["data"]
    assert detail["price_usd"] == plain_text(value) and exact(detail["price_usd"]) == value
    assert api.container.price_book.fresh_price("ETH", 60) == value


@st.composite
def limit_orders(draw: st.DrawFn) -> tuple[Decimal, Decimal, str, str]:
    # A limit buy under the market (50000) that the 10,000 USD order value cap allows.
    price = draw(st.decimals(min_value=D("0.00000001"), max_value=D("49999.99999999"), places=8))
    most = min(D("1000000"), (D(10000) / price).quantize(D("0.00000001"), rounding=ROUND_DOWN))
    quantity = draw(st.decimals(min_value=D("0.00001"), max_value=max(most, D("0.00001")), places=8))
    if quantity * price > 10000:
        quantity = D("0.00001")
    return quantity, price, draw(_texts(quantity)), draw(_texts(price))


@HYPOTHESIS
@given(case=limit_orders())
async def test_order_quantities_and_prices_round_trip_exactly(roomy: Api, case: tuple[Decimal, Decimal, str, str]) -> None:
    api = roomy
    quantity, price, quantity_text, price_text = case
    username, headers = await funded_user(api, "1000000")
    api.set_price("BTC", "50000")
    body = f'{{"order_type": "limit_buy", "asset_id": "BTC", "quantity": {quantity_text}, "price": {price_text}}}'
    r = await post_raw(api, "/api/v1/orders", body, headers)
    assert r.status_code == 201, (body, r.text)
    order = read(r)["data"]
    hold = (quantity * price).quantize(D("0.01"), rounding=ROUND_UP)
    assert order["status"] == "queued" and order["quantity"] == plain_text(quantity) and order["price"] == plain_text(price)
    assert exact(order["quantity"]) == quantity and exact(order["price"]) == price
    assert order["held_amount"] == usd_text(hold) and order["price_bound"] is None
    assert read(await api.client.get(f"/api/v1/orders/{order['order_id']}", headers=headers))["data"] == order
    (stored,) = (await snapshot(api, username)).orders
    assert stored.quantity == quantity and stored.price == price and stored.held_amount == hold


@st.composite
def trailing_and_stop(draw: st.DrawFn) -> tuple[Decimal, Decimal, Decimal, list[str]]:
    percent = draw(st.decimals(min_value=D("0.0001"), max_value=D("99.9999"), places=4))
    stop = draw(st.decimals(min_value=D("50000.00000001"), max_value=D("1000000"), places=8))
    amount = draw(st.decimals(min_value=D("0.00000001"), max_value=D("49999"), places=8))
    return percent, stop, amount, [draw(_texts(percent)), draw(_texts(stop)), draw(_texts(amount))]


@HYPOTHESIS
@given(case=trailing_and_stop())
async def test_stop_prices_trail_amounts_and_percents_round_trip_exactly(
    roomy: Api, case: tuple[Decimal, Decimal, Decimal, list[str]]
) -> None:
    api = roomy
    percent, stop, amount, (percent_text, stop_text, amount_text) = case
    _, headers = await funded_user(api, "100000")
    api.set_price("BTC", "50000")
    bodies = [
        f'{{"order_type": "trailing_stop_buy", "asset_id": "BTC", "quantity": "0.00001", "trail_percent": {percent_text}}}',
        f'{{"order_type": "stop_loss_buy", "asset_id": "BTC", "quantity": "0.00001", "stop_price": {stop_text}}}',
        f'{{"order_type": "trailing_stop_buy", "asset_id": "BTC", "quantity": "0.00001", "trail_amount": {amount_text}}}',
    ]
    orders = []
    for body in bodies:
        r = await post_raw(api, "/api/v1/orders", body, headers)
        assert r.status_code == 201, (body, r.text)
        orders.append(read(r)["data"])
    assert orders[0]["trail_percent"] == plain_text(percent) and exact(orders[0]["trail_percent"]) == percent
    assert orders[1]["stop_price"] == plain_text(stop) and exact(orders[1]["stop_price"]) == stop
    assert orders[2]["trail_amount"] == plain_text(amount) and exact(orders[2]["trail_amount"]) == amount
    for order in orders:
        usd(order["held_amount"])
        exact(order["stop_price"])


# --- the grammar's edge cases ----------------------------------------------------------------

_STRING_RULE = re.compile(r"[0-9]{1,20}(\.[0-9]{1,18})?")
_JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")

EDGE_STRINGS = [
    "100", "0.01", "1000000", "1000000.00", "1000000.01", "0", "0.00", "0.001", "10.5", "10.50", "10.500",
    "１００", "١٠٠", "٣", "1_000", "1,000", " 100", "100 ", " 100 ", "10 0", "100\n", "\t5", "+5", "-5", "-0",
    "1e2", "1E2", "1e-2", ".5", "5.", "0x10", "NaN", "nan", "Infinity", "-Infinity", "inf", "", ".", "1..2",
    "00000000000000000001", "000000000000000000001", "1." + "0" * 18, "1." + "0" * 19, "0." + "0" * 17 + "1",
    "9" * 20, "9" * 21, "12345678901234567890.123456789012345678", "৫", "߅", "𝟓",
]
EDGE_NUMBERS = [
    "100", "1e2", "1E2", "1.5e1", "150e-1", "1e+2", "0.01", "1e-2", "1e-3", "1e400", "1e-2000000", "-5", "-0",
    "0", "0.0", "0e10", "1000000", "1000000.0", "1e6", "1.000001e6", "10.001", "10.0010", "5.000000000000000000",
    "100.0000000000000000000000000000000000000001", "1" + "0" * 39, "1" + "0" * 40, "2." + "5" * 38,
    "0.00000000000000000000000000000000000000000001", "1" * 41, "3" * 5000, "012", "1.", "+1", ".5",
    # The text limit is judged on the text: 40 characters pass, 41 do not, whatever the value.
    "1." + "0" * 38, "1." + "0" * 39, "1e" + "0" * 37 + "2", "1e" + "0" * 38 + "2",
]
OTHERS = ["true", "false", "null", "[]", "[1]", '{"value": 1}', '["1"]', "NaN", "Infinity", "-Infinity"]


def deposit_oracle(kind: str, text: str) -> Decimal | str:
    """What the rule says a deposit of `text` is: the amount stored, or the field named in the 422."""
    if kind == "string":
        if not _STRING_RULE.fullmatch(text):
            return "amount"
        value = D(text)
    elif kind == "number":
        if not _JSON_NUMBER.fullmatch(text):
            return "body"  # not JSON at all
        if len(text) > 40:
            return "amount"
        value = D(text)
    else:
        return "amount"
    if value <= 0 or value > 1_000_000 or value != value.quantize(D("0.01"), rounding=ROUND_DOWN):
        return "amount"
    return value.quantize(D("0.01"))


async def _deposit_state(
    api: Api, username: str
) -> tuple[Balance | None, list[BalanceTransaction], dict[str, tuple[Decimal, Decimal]]]:
    """The balance, the ledger and today's deposit and withdrawal totals, through the DAO and service."""
    balance = await api.container.balance_dao.find_balance(username)
    return balance, await ledger(api, username), await api.container.money.daily_usage(username)


def _raw(kind: str, text: str) -> str:
    return jsonio.dumps(text).decode() if kind == "string" else text


async def _check_deposit(api: Api, username: str, headers: dict[str, str], kind: str, text: str) -> None:
    before = await _deposit_state(api, username)
    r = await post_raw(api, "/api/v1/balance/deposit", f'{{"amount": {_raw(kind, text)}}}', headers)
    expected = deposit_oracle(kind, text)
    if isinstance(expected, Decimal):
        assert r.status_code == 201, (kind, text, r.text)
        assert read(r)["amount"] == usd_text(expected), (kind, text)
        balance, entries, _ = await _deposit_state(api, username)
        old = before[0].available if before[0] is not None else D(0)
        assert balance is not None and balance.available == old + expected and len(entries) == len(before[1]) + 1
    else:
        problem = assert_problem(r, 422, "validation_error")
        assert problem["errors"][0]["field"] == expected, (kind, text, problem)
        assert await _deposit_state(api, username) == before, (kind, text)  # nothing stored


async def test_deposit_grammar_edge_cases_accept_or_refuse_exactly_and_refusals_store_nothing(roomy: Api) -> None:
    api = roomy
    username, headers = await api.register()
    cases = (
        [("string", t) for t in EDGE_STRINGS] + [("number", t) for t in EDGE_NUMBERS] + [("other", t) for t in OTHERS]
    )
    for kind, text in cases:
        await _check_deposit(api, username, headers, kind, text)
    accepted = [c for c in cases if isinstance(deposit_oracle(*c), Decimal)]
    assert 15 <= len(accepted) <= len(cases) - 60  # both sides of the rule were exercised


@settings(HYPOTHESIS, max_examples=60)
@given(
    case=st.one_of(
        st.tuples(st.just("string"), st.text(alphabet="0123456789.-+eE _,\n\u0660\uff10\u0966", max_size=42)),
        st.tuples(st.just("string"), st.from_regex(r"\A[0-9]{1,22}(\.[0-9]{1,20})?\Z")),
        st.tuples(st.just("number"), st.from_regex(r"\A-?(0|[1-9][0-9]{0,44})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?\Z")),
    )
)
async def test_deposit_grammar_random_texts_follow_the_rule(roomy: Api, case: tuple[str, str]) -> None:
    username, headers = await roomy.register()
    await _check_deposit(roomy, username, headers, *case)


@pytest.mark.parametrize(
    ("field", "raw", "message"),
    [
        ("quantity", "1e400", "at most"),
        ("quantity", '"1e400"', "ASCII digits"),
        ("quantity", "1e-2000000", "decimal places"),
        ("quantity", '"１"', "ASCII digits"),
        ("quantity", "true", "boolean"),
        ("quantity", "NaN", "finite"),
        ("quantity", "Infinity", "finite"),
        ("quantity", "[1]", "number"),
        ("quantity", '{"v": 1}', "number"),
        ("quantity", "1" * 41, "40 characters"),
        ("price", "1e-2000000", "decimal places"),
        ("price", "0.000000001", "decimal places"),
        ("price", "1000000.00000001", "at most"),
        ("price", '"-1"', "ASCII digits"),
        ("price", '" 40000"', "ASCII digits"),
        ("price", '"40_000"', "ASCII digits"),
    ],
)
async def test_order_number_fields_refuse_by_the_grammar_and_store_nothing(
    api: Api, field: str, raw: str, message: str
) -> None:
    username, headers = await funded_user(api)
    api.set_price("BTC", "50000")
    before = await snapshot(api, username)
    fields = {"quantity": '"0.01"', "price": '"40000"', field: raw}
    body = f'{{"order_type": "limit_buy", "asset_id": "BTC", "quantity": {fields["quantity"]}, "price": {fields["price"]}}}'
    problem = assert_problem(await post_raw(api, "/api/v1/orders", body, headers), 422, "validation_error")
    assert problem["errors"][0]["field"] == field and message in problem["errors"][0]["message"], problem
    assert await snapshot(api, username) == before


async def test_duplicate_keys_are_refused_naming_the_key_and_store_nothing(api: Api) -> None:
    username, headers = await funded_user(api, "100")
    api.set_price("BTC", "50000")
    before = await snapshot(api, username)
    r = await post_raw(api, "/api/v1/balance/deposit", '{"amount": "1", "amount": "1000"}', headers)
    problem = assert_problem(r, 422, "validation_error")
    assert problem["errors"] == [{"field": "amount", "message": "is given more than once in one object"}]
    body = '{"order_type": "market_buy", "asset_id": "BTC", "asset_id": "ETH", "quantity": "0.001"}'
    problem = assert_problem(await post_raw(api, "/api/v1/orders", body, headers), 422, "validation_error")
    assert problem["errors"][0]["field"] == "asset_id"
    assert await snapshot(api, username) == before


async def test_a_json_number_with_an_exponent_is_read_exactly(api: Api) -> None:
    username, headers = await api.register()
    r = await post_raw(api, "/api/v1/balance/deposit", '{"amount": 1.5e2}', headers)
    assert r.status_code == 201 and read(r)["amount"] == "150.00"
    r = await post_raw(api, "/api/v1/balance/deposit", '{"amount": 0.1}', headers)
    assert r.status_code == 201 and read(r)["amount"] == "0.10" and read(r)["balance"] == "150.10"
    balance = await api.container.balance_dao.find_balance(username)
    assert balance is not None and balance.available == D("150.10")


# --- SSE event data --------------------------------------------------------------------------


async def test_order_events_carry_the_wire_order_with_exact_strings(api: Api) -> None:
    username, headers = await funded_user(api, "10000")
    api.set_price("BTC", "50000")
    r = await api.order(headers, order_type="market_buy", asset_id="BTC", quantity="0.01", price="50500")
    assert r.status_code == 201
    (event,) = await api.container.events.since(username, "0")
    assert event.type == "order.completed"
    wire = jsonio.loads(jsonio.dumps(event.data))
    assert wire == read(r)["data"]
    assert wire["price"] == "50000" and wire["price_bound"] == "50500" and wire["executed_price"] == "50000"
    assert wire["total_amount"] == "500.00" and wire["held_amount"] == "0.00" and wire["quantity"] == "0.01"
    assert "username" not in wire
