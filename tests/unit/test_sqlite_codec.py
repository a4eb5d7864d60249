"""The SQLite engine's item bodies: every number back as the Decimal written, digit for digit."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import simplejson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnop.common.database import keys
from cnop.common.database.sqlite import SQLiteStore, _dumps, _loads
from cnop.common.database.store import Put

T = keys.USERS

NUMBERS = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([Decimal("-0"), Decimal("0.00"), Decimal("-0.00"), Decimal("1E+2"), Decimal("1E-18")]),
)
SCALARS = st.one_of(NUMBERS, st.text(), st.booleans(), st.none())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def exact(value: Any) -> Any:
    """`value` with every number as the text of the Decimal it must read back as."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | Decimal):
        return ("number", str(Decimal(value)))
    if isinstance(value, dict):
        return {name: exact(inner) for name, inner in value.items()}
    return [exact(inner) for inner in value]


@settings(deadline=None)  # no clock in a unit test: the machine may be busy
@given(attributes=st.dictionaries(st.text(max_size=8).filter(lambda n: n not in ("pk", "sk")), VALUES, max_size=6))
def test_bodies_round_trip_exactly(attributes: dict[str, Any]) -> None:
    item = {"pk": "P", "sk": "S", **attributes}
    got = _loads(_dumps(item))
    assert exact(got) == exact(item)
    assert all(not isinstance(v, int) or isinstance(v, bool) for v in _leaves(got))  # numbers are Decimals


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for inner in value.values() for leaf in _leaves(inner)]
    if isinstance(value, list):
        return [leaf for inner in value for leaf in _leaves(inner)]
    return [value]


def test_bodies_written_before_the_codec_changed_read_the_same() -> None:
    # The encoder before wrote non-ASCII characters escaped; both forms read alike.
    item = {"pk": "USER#zoë", "sk": "PROFILE", "name": "Zoë 🚀", "amount": Decimal("1000.10"), "n": 3}
    old = simplejson.dumps(item, use_decimal=True, separators=(",", ":"))
    assert "\\u00eb" in old and old != _dumps(item)
    assert exact(_loads(old)) == exact(_loads(_dumps(item))) == exact(item)


@pytest.mark.parametrize("number", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("sNaN")])
def test_nan_and_infinities_are_refused(number: Decimal) -> None:
    with pytest.raises(ValueError, match="not stored"):
        _dumps({"pk": "P", "sk": "S", "x": number})


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=VALUES)
def test_values_round_trip_through_the_store(tmp_path: Path, value: Any) -> None:
    async def scenario() -> None:
        store = SQLiteStore(str(tmp_path / "c.db"))
        try:
            await store.transact([Put(T, {"pk": "P", "sk": "S", "v": value})])
            got = await store.get(T, {"pk": "P", "sk": "S"})
            assert got is not None and exact(got["v"]) == exact(value)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_integral_numbers_read_as_decimals_and_negative_zero_keeps_its_sign() -> None:
    body = _dumps({"pk": "P", "sk": "S", "n": 3, "big": 10**30, "flag": True, "nested": [1, {"m": -2}, [0]]})
    got = _loads(body)
    assert exact(got) == exact({"pk": "P", "sk": "S", "n": 3, "big": 10**30, "flag": True, "nested": [1, {"m": -2}, [0]]})
    assert got["flag"] is True and type(got["n"]) is Decimal and type(got["nested"][1]["m"]) is Decimal
    for item in (
        {"pk": "P", "sk": "S", "zero": Decimal("-0")},
        {"pk": "P", "sk": "S", "list": [Decimal("-0")], "last": {"z": Decimal("-0")}},
        {"pk": "P", "sk": "S", "name": "bob-0", "date": "2026-01-02", "n": Decimal("-0.00"), "e": Decimal("-0E+3")},
    ):
        assert exact(_loads(_dumps(item))) == exact(item)
        assert str(_loads(_dumps(item)).get("zero", "-0")) == "-0"
