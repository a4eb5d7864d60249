"""Order service response envelopes (docs/api.md: Orders)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from cnop.common.entities.order import OrderResponse
from cnop.common.money import Price, Quantity, UsdAmount


class OrderEnvelope(BaseModel):
    data: OrderResponse


class OrderList(BaseModel):
    data: list[OrderResponse]
    has_more: bool
    next_cursor: str | None


class AssetTransaction(BaseModel):
    transaction_id: str
    asset_id: str
    transaction_type: str
    quantity: Quantity
    price: Price | None
    total: UsdAmount | None
    order_id: str | None
    status: str
    created_at: datetime
    timestamp: datetime  # the same instant as created_at; the original's clients read this name


class AssetTransactionList(BaseModel):
    data: list[AssetTransaction]
    has_more: bool
    next_cursor: str | None
