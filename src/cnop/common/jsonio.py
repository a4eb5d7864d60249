"""Exact JSON: Decimals are written as bare numbers with their exact digits, and read back as Decimals."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import simplejson
from pydantic import BaseModel
from starlette.responses import Response

from cnop.common.clock import isoformat


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # Positional notation always: str(Decimal("0.00000001")) would be "1E-8".
        text = format(value, "f")
        return simplejson.RawJSON("0" if text == "-0" else text)
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
    """Encode to JSON bytes; Decimal -> exact number, datetime -> RFC 3339 UTC with milliseconds."""
    text: str = simplejson.dumps(
        value, use_decimal=False, default=_default, separators=(",", ":"), ensure_ascii=False, for_json=False
    )
    return text.encode("utf-8")


def loads(data: bytes | str) -> Any:
    """Decode JSON with every non-integer number as an exact Decimal."""
    return simplejson.loads(data, use_decimal=True)


class ExactJSONResponse(Response):
    """A JSON response whose numbers keep their exact decimal digits."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, BaseModel):
            content = content.model_dump(mode="python")
        return dumps(content)


class ProblemResponse(ExactJSONResponse):
    """RFC 9457 problem details."""

    media_type = "application/problem+json"
