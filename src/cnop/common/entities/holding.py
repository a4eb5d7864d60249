"""Asset balances."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict

from cnop.common.money import MONEY_CONTEXT


class Holding(BaseModel):
    """Units of one asset a user owns: `available + held = quantity`.

    `cost_basis` is the USD paid for the units still held (average-cost method).
    """

    model_config = ConfigDict(frozen=True)

    username: str
    asset_id: str
    available: Decimal
    held: Decimal
    cost_basis: Decimal
    created_at: datetime
    updated_at: datetime
    version: Decimal = Decimal(0)
    """Bumped by every change; a sell that computed its cost basis from this snapshot applies
    only while the holding is still at this version (see services/order/settlement.py)."""

    @property
    def quantity(self) -> Decimal:
        return MONEY_CONTEXT.add(self.available, self.held)  # exact: 38 digits, as the stores keep


class AssetTransaction(BaseModel):
    """One movement of a user's units of an asset (docs/storage.md §2): a buy or sell, or a resting
    sell's `hold` and `release`. The sum of `available_change` and `held_change` over a user's
    asset transactions is their holding (invariant 1)."""

    model_config = ConfigDict(frozen=True)

    transaction_id: str
    username: str
    asset_id: str
    transaction_type: str
    quantity: Decimal
    available_change: Decimal
    held_change: Decimal
    price: Decimal | None = None
    total: Decimal | None = None
    order_id: str | None = None
    status: str = "completed"
    created_at: datetime
