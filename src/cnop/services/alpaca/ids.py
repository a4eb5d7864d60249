"""Ids as Alpaca's clients expect them: UUIDs.

Our order ids are ULIDs, 128 bits, so each has exactly one UUID rendering and back. Assets and
accounts have no 128-bit id of their own; they get a name-based UUID (version 5), stable across
processes and restarts.
"""

from __future__ import annotations

import uuid

from ulid import ULID

_NAMESPACE = uuid.UUID("5d2f6f0e-3b1c-4c8e-9a57-0c6e0d1b7a11")


def order_uuid(order_id: str) -> str:
    """The UUID form of one of our order ids (a ULID); an id of another form is hashed stably."""
    try:
        return str(ULID.from_str(order_id).to_uuid())
    except ValueError:
        return str(uuid.uuid5(_NAMESPACE, f"order:{order_id}"))


def order_id_from(text: str) -> str | None:
    """Our order id for a UUID (or our own ULID form) a client sends back; None if it is neither."""
    try:
        return str(ULID.from_uuid(uuid.UUID(text)))
    except ValueError:
        pass
    try:
        return str(ULID.from_str(text))
    except ValueError:
        return None


def asset_uuid(asset_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"asset:{asset_id}"))


def account_uuid(username: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"account:{username}"))
