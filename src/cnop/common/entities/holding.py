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

    @property
    def quantity(self) -> Decimal:
        return MONEY_CONTEXT.add(self.available, self.held)  # exact: 38 digits, as the stores keep
