"""DynamoDB attribute values for the store's items: exact Decimals, trailing zeros included.

DynamoDB keeps numbers exactly but drops their trailing zeros (`1000.10` reads as `1000.1`). The
store promises Decimals back as written, so where a number's exponent differs from the
trailing-zero-free form, the item carries a hidden marker attribute `__exp:{name}` (or
`__exp+:{name}` for a positive exponent, `1E+2`) with it; markers are never returned. The marker
of a number is a number set of exponents, so that a numeric `add` keeps it right with an `ADD`
and without reading the item (a sum's exponent is the least of its terms').
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from decimal import Context, Decimal
from typing import Any

from boto3.dynamodb.types import DYNAMODB_CONTEXT, TypeDeserializer, TypeSerializer

from cnop.common.database import keys
from cnop.common.database.store import KEY_ATTRIBUTES, Item, Key

AttributeValue = dict[str, Any]

MARKER_PREFIX = "__exp"
"""Attribute names starting with this are reserved for the engine's number-exponent markers."""
SCALE = "__exp:"  # NS: a number's exponent is the least of these and its own; S: a container's
EXACT = "__exp+:"  # N: a number's exact, positive exponent (`1E+2`); any `add` drops it

_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()
_WIDE = Context(prec=200)  # normalise and re-scale numbers without rounding
_ONE = Decimal(1)


def exponent_of(number: Decimal) -> int:
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int):
        raise TypeError("NaN and infinities are not stored")
    return exponent


def canonical(number: Decimal) -> Decimal:
    """The number as it reads back whatever text DynamoDB returns: no trailing zeros, no E+n."""
    if not number:
        return Decimal(0)
    normal = number.normalize(_WIDE)
    if exponent_of(normal) > 0:
        normal = normal.quantize(_ONE, context=_WIDE)
    return normal


def rescale(number: Decimal, exponent: int) -> Decimal:
    rescaled = number.quantize(Decimal((0, (1,), exponent)), context=_WIDE)
    return rescaled if rescaled == number else number


def is_number(value: Any) -> bool:
    return isinstance(value, int | Decimal) and not isinstance(value, bool)


def numbers_in(value: Any) -> Iterator[Decimal]:
    """Every number inside `value`, in a fixed order (maps by sorted key, lists in order)."""
    if is_number(value):
        yield Decimal(value)
    elif isinstance(value, dict):
        for name in sorted(value):
            yield from numbers_in(value[name])
    elif isinstance(value, list | tuple):
        for inner in value:
            yield from numbers_in(inner)


def map_numbers(value: Any, fn: Callable[[Decimal], Decimal]) -> Any:
    """`value` with every number replaced by `fn(number)`, visiting them in `numbers_in` order."""
    if is_number(value):
        return fn(Decimal(value))
    if isinstance(value, dict):
        mapped = {name: map_numbers(value[name], fn) for name in sorted(value)}
        return {name: mapped[name] for name in value}
    if isinstance(value, list | tuple):
        return [map_numbers(inner, fn) for inner in value]
    return value


def marker_of(value: Any) -> tuple[str, AttributeValue] | None:
    """The marker (kind, value) that restores the exponents of the numbers in `value`, if needed."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return None  # no number, or an int (it reads back as written)
    if kind is Decimal:
        _, digits, exponent = value.as_tuple()
        if type(exponent) is int and exponent <= 0 and digits[-1] != 0:
            return None  # no trailing zero to lose: it reads back as written (the common case)
    if is_number(value):
        number = Decimal(value)
        exponent = exponent_of(number)
        if exponent == exponent_of(canonical(number)):
            return None
        return (EXACT, {"N": str(exponent)}) if exponent > 0 else (SCALE, {"NS": [str(exponent)]})
    exponents = []
    needed = False
    for number in numbers_in(value):
        exponent = exponent_of(number)
        if exponent == exponent_of(canonical(number)):
            exponents.append("")
        else:
            exponents.append(str(exponent))
            needed = True
    return (SCALE, {"S": ",".join(exponents)}) if needed else None


def apply_marker(value: Any, marker: AttributeValue) -> Any:
    if "N" in marker and is_number(value):
        return rescale(Decimal(value), int(marker["N"]))
    if "NS" in marker and is_number(value):
        number = Decimal(value)
        return rescale(number, min([exponent_of(number), *(int(e) for e in marker["NS"])]))
    if "S" in marker and not is_number(value):
        exponents = marker["S"].split(",")
        if len(exponents) != sum(1 for _ in numbers_in(value)):
            return value
        pending = iter(exponents)

        def restore(number: Decimal) -> Decimal:
            exponent = next(pending)
            return rescale(number, int(exponent)) if exponent else number

        return map_numbers(value, restore)
    return value


_create_decimal = DYNAMODB_CONTEXT.create_decimal


def serialize(value: Any) -> AttributeValue:
    """A Python value as a DynamoDB attribute value (floats, NaN and infinities refused).

    What boto3's `TypeSerializer` gives, with the store's common types (strings, numbers, bools,
    None, maps and lists of them) done by one type test each instead of its chain of checks;
    any other type goes to `TypeSerializer`. Numbers pass through DynamoDB's context as there
    (38 digits: anything it would round is refused).
    """
    kind = type(value)
    try:
        if kind is str:
            return {"S": value}
        if kind is Decimal or kind is int:
            number = str(_create_decimal(value))
            if number in ("Infinity", "NaN"):
                raise TypeError("Infinity and NaN not supported")
            return {"N": number}
        if kind is bool:
            return {"BOOL": value}
        if value is None:
            return {"NULL": True}
        if kind is dict:
            return {"M": {name: serialize(inner) for name, inner in value.items()}}
        if kind is list:
            return {"L": [serialize(inner) for inner in value]}
        result: AttributeValue = _SERIALIZER.serialize(value)
    except ArithmeticError as exc:
        raise ValueError(f"number out of DynamoDB's range (38 digits): {value}") from exc
    return result


def marker_names(attr: str) -> tuple[str, str]:
    return f"{SCALE}{attr}", f"{EXACT}{attr}"


def marker_attr(name: str) -> str | None:
    """The attribute a marker attribute belongs to; None for an ordinary attribute."""
    for kind in (SCALE, EXACT):
        if name.startswith(kind):
            return name[len(kind) :]
    return None


def check_name(attr: str) -> None:
    if attr.startswith(MARKER_PREFIX):
        raise ValueError(f"attribute names starting with {MARKER_PREFIX!r} are reserved")


def is_index_key(attr: str) -> bool:
    return any(attr in (spec.pk_attr, spec.sk_attr) for spec in keys.INDEXES.values())


def encode_item(item: Item) -> dict[str, AttributeValue]:
    """An item as DynamoDB attributes, with exponent markers where trailing zeros need them.

    A None index-key attribute is left out (DynamoDB cannot index NULL): the item is simply not
    in that index, as with the SQLite engine.
    """
    encoded: dict[str, AttributeValue] = {}
    for name, value in item.items():
        check_name(name)
        if value is None and is_index_key(name):
            continue
        encoded[name] = serialize(value)
        marker = marker_of(value)
        if marker is not None:
            kind, marker_value = marker
            encoded[f"{kind}{name}"] = marker_value
    return encoded


def decode_item(raw: Mapping[str, AttributeValue]) -> Item:
    """The item a DynamoDB response holds, numbers restored as written, markers dropped."""
    item: Item = {
        name: map_numbers(_DESERIALIZER.deserialize(value), canonical)
        for name, value in raw.items()
        if not name.startswith(MARKER_PREFIX)
    }
    for name, marker in raw.items():
        attr = marker_attr(name)
        if attr is not None and attr in item:
            item[attr] = apply_marker(item[attr], marker)
    return item


def encode_key(key: Key) -> dict[str, AttributeValue]:
    for name in KEY_ATTRIBUTES:
        if not isinstance(key.get(name), str) or not key[name]:
            raise ValueError(f"key needs a non-empty string {name!r}")
    return {"pk": {"S": key["pk"]}, "sk": {"S": key["sk"]}}
