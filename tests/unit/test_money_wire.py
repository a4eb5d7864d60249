"""The wire format of Decimals and the input grammar, without an app (decision 0008)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from cnop.common import jsonio
from cnop.common.money import (
    PercentInput,
    Price,
    PriceInput,
    Quantity,
    QuantityInput,
    RejectedNumber,
    UsdAmount,
    UsdAmountInput,
    canonical,
    plain_text,
    usd_text,
)

D = Decimal


@pytest.mark.parametrize(
    ("value", "plain", "usd"),
    [
        (D("1000.00"), "1000", "1000.00"),
        (D("1000"), "1000", "1000.00"),
        (D("1E+3"), "1000", "1000.00"),
        (D("0.00100000"), "0.001", "0.00"),
        (D("1E-8"), "0.00000001", "0.00"),
        (D("-6172.84"), "-6172.84", "-6172.84"),
        (D("-0.00"), "0", "0.00"),
        (D("-0"), "0", "0.00"),
        (D("0E-10"), "0", "0.00"),
        (D("67250.12"), "67250.12", "67250.12"),
        (D("0.1"), "0.1", "0.10"),
    ],
)
def test_plain_and_usd_text(value: Decimal, plain: str, usd: str) -> None:
    assert plain_text(value) == plain
    assert usd_text(value) == usd


def test_canonical_drops_trailing_zeros_without_an_exponent() -> None:
    assert str(canonical(D("1000.000"))) == "1000"
    assert str(canonical(D("0.10"))) == "0.1"
    assert str(canonical(D("1E+3"))) == "1000"


class Out(BaseModel):
    cash: UsdAmount
    qty: Quantity
    price: Price | None


def test_response_types_dump_strings_and_the_encoder_writes_no_number() -> None:
    out = Out(cash=D("5"), qty=D("0.50"), price=None)
    assert out.model_dump() == {"cash": "5.00", "qty": "0.5", "price": None}
    assert jsonio.dumps(out) == b'{"cash":"5.00","qty":"0.5","price":null}'
    # A bare Decimal outside a model is written as an exact plain string too.
    assert jsonio.dumps({"x": D("1E-8")}) == b'{"x":"0.00000001"}'


class In(BaseModel):
    amount: UsdAmountInput | None = None
    qty: QuantityInput | None = None
    price: PriceInput | None = None
    pct: PercentInput | None = None


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("amount", "10", D("10.00")),
        ("amount", 10, D("10.00")),
        ("amount", D("10.5"), D("10.50")),
        ("amount", D("1.5E+2"), D("150.00")),
        ("amount", "10.500", D("10.50")),
        ("qty", "1.000", D("1")),
        ("qty", D("1E+3"), D("1000")),
        ("price", "0.00000001", D("0.00000001")),
        ("pct", "99.9999", D("99.9999")),
    ],
)
def test_inputs_are_read_exactly_and_made_canonical(field: str, value: Any, expected: Decimal) -> None:
    parsed = getattr(In.model_validate({field: value}), field)
    assert parsed == expected and str(parsed) == str(expected)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("amount", 10.5, "binary float"),
        ("amount", True, "boolean"),
        ("amount", "10.001", "at most 2 decimal places"),
        ("amount", D("1E-2000000"), "at most 2 decimal places"),
        ("amount", D("1E+400"), "at most 1000000"),
        ("amount", D("NaN"), "finite"),
        ("amount", D("-0"), "greater than 0"),
        ("amount", "1e2", "ASCII digits"),
        ("amount", "100\n", "ASCII digits"),
        ("amount", "\uff11", "ASCII digits"),
        ("amount", RejectedNumber("must be a finite number, not NaN"), "not NaN"),
        ("amount", [1], "number"),
        ("pct", "100", "less than 100"),
        ("price", "0.000000001", "at most 8 decimal places"),
        ("qty", "0." + "0" * 17 + "1", None),  # 18 places: the most a quantity may have
        ("qty", "0." + "0" * 18 + "1", "ASCII digits"),
    ],
)
def test_inputs_outside_the_grammar_are_refused(field: str, value: Any, message: str | None) -> None:
    if message is None:
        assert getattr(In.model_validate({field: value}), field) == D(value)
        return
    with pytest.raises(ValidationError) as caught:
        In.model_validate({field: value})
    (error,) = caught.value.errors()
    assert error["loc"] == (field,) and message in error["msg"], error


def test_the_request_reader_bounds_numbers_and_refuses_duplicate_keys() -> None:
    body = jsonio.loads_request(b'{"a": 0.1, "b": 12, "c": NaN, "d": ' + b"1" * 41 + b"}")
    assert body["a"] == D("0.1") and type(body["a"]) is Decimal and body["b"] == 12
    assert isinstance(body["c"], RejectedNumber) and isinstance(body["d"], RejectedNumber)
    assert jsonio.loads_request(b'{"n": ' + b"9" * 5000 + b"}")["n"].reason.endswith("40 characters")
    with pytest.raises(jsonio.DuplicateKey) as caught:
        jsonio.loads_request(b'{"x": {"k": 1, "k": 2}}')
    assert caught.value.key == "k"
