"""Condition, key-condition and update expressions compiled from the store's typed ops.

A compiled condition is true exactly when `store.evaluate` (the reference semantics) is; an item
whose `expires_at` has passed reads as absent. An `Update` of such an item starts from nothing,
as on an absent item: the update carries a guard "absent or live"; if only that guard fails, the
op is re-sent as a `Put` of the item the update leaves behind (guarded by "absent or expired"),
which is what an `Assumption` records.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cnop.common.database.dynamodb.codec import (
    EXACT,
    MARKER_PREFIX,
    SCALE,
    AttributeValue,
    check_name,
    exponent_of,
    is_index_key,
    is_number,
    marker_names,
    marker_of,
    serialize,
)
from cnop.common.database.store import (
    SORT_KEY_COMPARISONS,
    TTL_ATTRIBUTE,
    And,
    AttrExists,
    AttrNotExists,
    Condition,
    Eq,
    Exists,
    Ge,
    Gt,
    Item,
    Le,
    Lt,
    Ne,
    Not,
    NotExists,
    Or,
    SortKey,
    Update,
    is_live,
)

_NO_ATTRIBUTE = MARKER_PREFIX  # a name no item ever carries: used for tautologies and no-op updates


class Expression:
    """Placeholders for one request: every name is `#nN`, every value `:vN` (values deduplicated)."""

    def __init__(self, now: float | None = None) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, AttributeValue] = {}
        self._name_ids: dict[str, str] = {}
        self._value_ids: dict[tuple[str, str], str] = {}
        self.now = Decimal(repr(time.time() if now is None else now))

    def name(self, attr: str) -> str:
        placeholder = self._name_ids.get(attr)
        if placeholder is None:
            placeholder = self._name_ids[attr] = f"#n{len(self._name_ids)}"
            self.names[placeholder] = attr
        return placeholder

    def value(self, value: Any) -> str:
        return self.raw_value(serialize(value))

    def raw_value(self, value: AttributeValue) -> str:
        # Equal values share a placeholder. The common case, one type code and a string (`S`,
        # `N`), is its own identity; anything else is told apart by its JSON text.
        ident: tuple[str, str]
        if len(value) == 1:
            ((code, inner),) = value.items()
            ident = (code, inner) if type(inner) is str else (code, json.dumps(inner, sort_keys=True, default=repr))
        else:
            ident = ("", json.dumps(value, sort_keys=True, default=repr))
        placeholder = self._value_ids.get(ident)
        if placeholder is None:
            placeholder = self._value_ids[ident] = f":v{len(self._value_ids)}"
            self.values[placeholder] = value
        return placeholder

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.names:
            params["ExpressionAttributeNames"] = dict(self.names)
        if self.values:
            params["ExpressionAttributeValues"] = dict(self.values)
        return params

    # --- conditions ---------------------------------------------------------------------------

    def _expired(self) -> str:
        return f"{self.name(TTL_ATTRIBUTE)} <= {self.value(self.now)}"

    def absent(self) -> str:
        """No item, or an expired one (`NotExists`)."""
        return f"(attribute_not_exists({self.name('pk')}) OR {self._expired()})"

    def absent_or_live(self) -> str:
        """Not an expired item still stored: the guard of an `Update` that keeps the item."""
        return f"(attribute_not_exists({self.name('pk')}) OR NOT ({self._expired()}))"

    def condition(self, condition: Condition) -> str:
        """A condition expression true exactly when `store.evaluate` is.

        A comparison or `attribute_exists` is already false on an absent item; `AND NOT expired`
        makes it false on an expired one too. `<>` is also true on a missing attribute or another
        type in DynamoDB, so it is guarded by `attribute_type`.
        """
        match condition:
            case Exists():
                return f"(attribute_exists({self.name('pk')}) AND NOT ({self._expired()}))"
            case NotExists():
                return self.absent()
            case AttrExists(attr):
                return f"(attribute_exists({self.name(attr)}) AND NOT ({self._expired()}))"
            case AttrNotExists(attr):
                return f"(attribute_not_exists({self.name(attr)}) OR {self._expired()})"
            case And(conditions):
                if not conditions:
                    return self._always(True)
                if len(conditions) == 1:  # DynamoDB refuses redundant parentheses
                    return self.condition(conditions[0])
                return "(" + " AND ".join(self.condition(c) for c in conditions) + ")"
            case Or(conditions):
                if not conditions:
                    return self._always(False)
                if len(conditions) == 1:
                    return self.condition(conditions[0])
                return "(" + " OR ".join(self.condition(c) for c in conditions) + ")"
            case Not(inner):
                return f"(NOT {self.condition(inner)})"
            case Eq() | Ne() | Lt() | Le() | Gt() | Ge():
                return self._comparison(condition)
        raise TypeError(f"not a condition: {condition!r}")

    def init_guard(self, op: Update, present: frozenset[str]) -> list[str]:
        """Conditions that the marked `init` attributes are present or missing, as assumed."""
        guards = []
        for attr, value in op.init.items():
            if marker_of(value) is not None:
                test = "attribute_exists" if attr in present else "attribute_not_exists"
                guards.append(f"{test}({self.name(attr)})")
        return guards

    def _always(self, truth: bool) -> str:
        name = self.name(_NO_ATTRIBUTE)
        if truth:
            return f"(attribute_not_exists({name}) OR attribute_exists({name}))"
        return f"(attribute_not_exists({name}) AND attribute_exists({name}))"

    def _comparison(self, condition: Eq | Ne | Lt | Le | Gt | Ge) -> str:
        attr, value = condition.attr, condition.value
        operator = condition.symbol
        if operator not in ("=", "<>") and not (isinstance(value, str) or is_number(value)):
            raise TypeError(f"{operator} compares numbers or strings, not {type(value).__name__}")
        serialized = serialize(value)
        name, placeholder = self.name(attr), self.raw_value(serialized)
        compare = f"{name} {operator} {placeholder}"
        if operator == "<>":
            (type_code,) = serialized
            compare = f"attribute_type({name}, {self.value(type_code)}) AND {compare}"
        return f"({compare} AND NOT ({self._expired()}))"

    # --- key conditions and updates -------------------------------------------------------------

    def sort_key(self, attr: str, sk: SortKey, numeric: bool) -> str:
        name = self.name(attr)
        if sk.op == "begins_with":
            if numeric:
                raise ValueError("begins_with needs a string sort key")
            return f"begins_with({name}, {self.value(sk.value)})"
        if sk.op == "between":
            return f"{name} BETWEEN {self.value(sk.value)} AND {self.value(sk.high)}"
        if sk.op in SORT_KEY_COMPARISONS:
            return f"{name} {sk.op} {self.value(sk.value)}"
        raise ValueError(f"unknown sort-key operator {sk.op!r}")

    def update(self, op: Update, present: frozenset[str] = frozenset()) -> str:
        """`SET`/`REMOVE`/`ADD` clauses for `op`; a numeric add is `SET a = if_not_exists(a, 0) + v`.

        `init` is `SET a = if_not_exists(a, v)`, except for a value that needs an exponent marker:
        that one is set (with its marker) unless it is in `present`, under `init_guard`.
        """
        sets: list[str] = []
        removes: list[str] = []
        adds: list[str] = []
        for attr, value in op.set.items():
            check_name(attr)
            if value is None and is_index_key(attr):
                removes += [self.name(attr), *map(self.name, marker_names(attr))]
                continue
            sets.append(f"{self.name(attr)} = {self.value(value)}")
            marker = marker_of(value)
            for kind, name in zip((SCALE, EXACT), marker_names(attr), strict=True):
                if marker is not None and marker[0] == kind:
                    sets.append(f"{self.name(name)} = {self.raw_value(marker[1])}")
                else:
                    removes.append(self.name(name))
        for attr, amount in op.add.items():
            check_name(attr)
            if not is_number(amount):
                raise TypeError("add takes numbers")
            name = self.name(attr)
            sets.append(f"{name} = if_not_exists({name}, {self.value(Decimal(0))}) + {self.value(amount)}")
            scale, exact = marker_names(attr)
            removes.append(self.name(exact))
            exponent = exponent_of(Decimal(amount))
            if exponent < 0:
                adds.append(f"{self.name(scale)} {self.raw_value({'NS': [str(exponent)]})}")
        for attr in op.remove:
            check_name(attr)
            removes += [self.name(attr), *map(self.name, marker_names(attr))]
        for attr, value in op.init.items():
            check_name(attr)
            if (value is None and is_index_key(attr)) or attr in present:
                continue
            marker = marker_of(value)
            if marker is None:
                name = self.name(attr)
                sets.append(f"{name} = if_not_exists({name}, {self.value(value)})")
            else:
                kind, marker_value = marker
                sets.append(f"{self.name(attr)} = {self.value(value)}")
                sets.append(f"{self.name(kind + attr)} = {self.raw_value(marker_value)}")
        if not (sets or removes or adds):
            removes.append(self.name(_NO_ATTRIBUTE))  # creates the item if missing, changes nothing
        clauses = []
        if sets:
            clauses.append("SET " + ", ".join(sets))
        if removes:
            clauses.append("REMOVE " + ", ".join(removes))
        if adds:
            clauses.append("ADD " + ", ".join(adds))
        return " ".join(clauses)


@dataclass(frozen=True, slots=True)
class Assumption:
    """What the request for an `Update` assumes of the current item, checked by its guard.

    `recreate`: the item is stored but expired, so the update is sent as a `Put` of its result;
    `present`: which `init` attributes whose values need an exponent marker already exist (an
    `if_not_exists` cannot set a marker only when it sets the value).
    """

    recreate: bool = False
    present: frozenset[str] = frozenset()

    @classmethod
    def of(cls, op: Update, current: Item | None, now: float) -> Assumption:
        if current is not None and not is_live(current, now):
            return cls(recreate=True)
        if current is None:
            return cls()
        return cls(present=frozenset(a for a, v in op.init.items() if marker_of(v) is not None and a in current))
