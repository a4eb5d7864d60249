"""Cash balance and ledger entities."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class TransactionType(StrEnum):
    DEPOSIT = "deposit"
    WITHDRAW = "withdraw"
    ORDER_PAYMENT = "order_payment"
    ORDER_PROCEEDS = "order_proceeds"
    ORDER_REFUND = "order_refund"
    ORDER_HOLD = "order_hold"
    ORDER_RELEASE = "order_release"
    SYSTEM_ADJUSTMENT = "system_adjustment"


class TransactionStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Balance(BaseModel):
    """A user's USD: `available + held = current_balance`."""

    model_config = ConfigDict(frozen=True)

    username: str
    available: Decimal
    held: Decimal
    total_deposited: Decimal
    total_withdrawn: Decimal
    currency: str = "USD"
    created_at: datetime
    updated_at: datetime

    @property
    def current_balance(self) -> Decimal:
        return self.available + self.held


class BalanceTransaction(BaseModel):
    """One ledger entry. `amount` is the magnitude; the two changes are signed.

    The sum of `available_change` over a user's ledger is their available cash, and the sum of
    `held_change` is their held cash (docs/storage.md §2, invariant 1).
    """

    model_config = ConfigDict(frozen=True)

    transaction_id: str
    username: str
    transaction_type: TransactionType
    amount: Decimal
    available_change: Decimal
    held_change: Decimal
    status: TransactionStatus = TransactionStatus.COMPLETED
    description: str
    order_id: str | None = None
    created_at: datetime
