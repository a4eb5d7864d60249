"""Exact JSON: Decimals are written as strings in plain notation, and request numbers read exactly.

Responses: a Decimal in a response model is written by its field type (`cnop.common.money`:
`UsdAmount` as `"1000.00"`, `Quantity`/`Price`/`Percent` without padding); a bare Decimal
outside a model is written like a quantity (exact, plain, a string). Never a JSON number, never
an exponent (decision 0008).

Requests (`loads_request`): every JSON number is read from its text (never through float);
a number text longer than `MAX_NUMBER_TEXT`, `NaN` and `Infinity` become a `RejectedNumber`
so the field they were sent for is named in the 422; a key repeated in one object is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import msgspec
import simplejson
from pydantic import BaseModel
from starlette.responses import Response

from cnop.common.clock import isoformat
from cnop.common.money import MAX_NUMBER_TEXT, RejectedNumber, plain_text


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # Plain notation always: str(Decimal("0.00000001")) would be "1E-8".
        return plain_text(value)
    if isinstance(value, datetime):
        return isoformat(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="python")
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    """Encode to JSON bytes; Decimal -> exact plain string, datetime -> RFC 3339 UTC with milliseconds."""
    text: str = simplejson.dumps(
        value, use_decimal=False, default=_default, separators=(",", ":"), ensure_ascii=False, for_json=False
    )
    return text.encode("utf-8")


_NATIVE = msgspec.json.Encoder()


def dumps_native(value: dict[str, Any]) -> bytes:
    """`dumps` of a value made only of str, None, bool, int, dicts and lists (a wire form built by
    hand, e.g. `order_wire`): the same bytes in one C pass (`tests/unit/test_order_wire.py`)."""
    return _NATIVE.encode(value)


@dataclass(frozen=True, slots=True)
class Rendered:
    """A body written already: the bytes `dumps` gives for the model it stands for."""

    body: bytes


def render(value: Any) -> bytes:
    """`dumps(value)`, or the body of a `Rendered`."""
    return value.body if isinstance(value, Rendered) else dumps(value)


def loads(data: bytes | str) -> Any:
    """Decode JSON with every non-integer number as an exact Decimal."""
    return simplejson.loads(data, use_decimal=True)


class DuplicateKey(ValueError):
    """A request object names one key twice: which value was meant is unknowable."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key


_TOO_LONG = f"must be a number whose text is at most {MAX_NUMBER_TEXT} characters"


def _number(text: str) -> Decimal | RejectedNumber:
    return Decimal(text) if len(text) <= MAX_NUMBER_TEXT else RejectedNumber(_TOO_LONG)


def _integer(text: str) -> int | RejectedNumber:
    return int(text) if len(text) <= MAX_NUMBER_TEXT else RejectedNumber(_TOO_LONG)


def _constant(name: str) -> RejectedNumber:
    return RejectedNumber(f"must be a finite number, not {name}")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return result


def loads_request(data: bytes | str) -> Any:
    """Decode a request body: numbers exactly, bounded, no NaN/Infinity, no duplicate keys.

    Raises `json.JSONDecodeError` for text that is not JSON and `DuplicateKey` for a repeated key.
    """
    return json.loads(
        data, parse_float=_number, parse_int=_integer, parse_constant=_constant, object_pairs_hook=_object
    )


class ExactJSONResponse(Response):
    """A JSON response whose numbers keep their exact decimal digits."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, BaseModel):
            content = content.model_dump(mode="python")
        return dumps(content)


class RenderedJSONResponse(Response):
    """A body `dumps` already wrote (a cached rendering): the same bytes and headers as `ExactJSONResponse`."""

    media_type = "application/json"

    def __init__(self, body: bytes, status_code: int = 200, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(body, status_code=status_code, headers=headers)


class ProblemResponse(ExactJSONResponse):
    """RFC 9457 problem details."""

    media_type = "application/problem+json"
