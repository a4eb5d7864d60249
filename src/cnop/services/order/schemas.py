"""Order service response envelopes (api.md: Orders)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from cnop.common.entities.order import OrderResponse
from cnop.common.money import Money


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
    quantity: Money
    price: Money | None
    total: Money | None
    order_id: str | None
    status: str
    created_at: datetime


class AssetTransactionList(BaseModel):
    data: list[AssetTransaction]
    has_more: bool
    next_cursor: str | None
