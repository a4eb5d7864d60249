"""Reading API answers the way a careful client does (decision 0008).

`read` parses a response with the project's exact JSON reader (non-integer numbers become
Decimals, so a stray JSON number can never equal the string a test expects). `usd` and `exact`
check that a Decimal field is a string in the one wire format and give back its Decimal.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from cnop.common import jsonio
from cnop.common.money import PLAIN_PATTERN, USD_PATTERN

_USD = re.compile(USD_PATTERN)
_PLAIN = re.compile(PLAIN_PATTERN)


def read(response: Any) -> Any:
    """The body of `response`, parsed exactly."""
    return jsonio.loads(response.content)


def usd(value: Any) -> Decimal:
    """`value` must be a USD string with exactly two places (`"1000.00"`); its Decimal."""
    assert isinstance(value, str) and _USD.fullmatch(value), f"not a USD string: {value!r}"
    return Decimal(value)


def exact(value: Any) -> Decimal:
    """`value` must be a plain decimal string without padding (`"0.001"`, `"67250"`); its Decimal."""
    assert isinstance(value, str) and _PLAIN.fullmatch(value), f"not a plain decimal string: {value!r}"
    return Decimal(value)
