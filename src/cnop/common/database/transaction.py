"""A use case's one transaction, built leg by leg (docs/decisions/0027-seed-dao-live-path.md).

The DAOs' write methods (the seed's names, listed in docs/architecture.md: `OrderDAO.create_order`,
`update_order_status`, `update_order`, `BalanceDAO.create_balance`, `create_transaction`,
`update_transaction_status`, `UserDAO.create_user`) take an optional `tx: Legs`. Without it a
method writes at once, alone; with it the method only adds its ops to `tx`, each under the `Leg`
it belongs to, and the use case commits every leg at once with `Legs.commit`. A condition that
fails comes back as `GuardFailed(leg=...)`, so the use case maps it to a domain error by the
leg's name, never by an op's position in the transaction.
"""

from __future__ import annotations

from enum import StrEnum

from cnop.common.database.store import Item, ItemStore, Op
from cnop.common.exceptions import ConditionFailed


class Leg(StrEnum):
    """What an op of a use case's transaction writes (or, for a check, guards)."""

    ORDER = "order"
    LEDGER = "ledger"
    BALANCE = "balance"
    HOLDING = "holding"
    ASSET_TRANSACTION = "asset_transaction"
    HOUSE = "house"
    IDEMPOTENCY = "idempotency"
    USER = "user"
    EMAIL = "email"
    DAILY_LIMIT = "daily_limit"


class GuardFailed(ConditionFailed):
    """A leg's condition did not hold: `leg` names it, `index` is its op's place in the transaction."""

    def __init__(self, leg: Leg, index: int, item: Item | None = None) -> None:
        self.leg = leg
        super().__init__(index, f"the {leg.value} leg's condition failed", item=item)


class Legs:
    """The ops of one transaction, each named by the leg it belongs to."""

    __slots__ = ("names", "ops")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.names: list[Leg] = []

    def add(self, leg: Leg, *ops: Op) -> Legs:
        self.ops.extend(ops)
        self.names.extend(leg for _ in ops)
        return self

    def leg_at(self, index: int) -> Leg:
        return self.names[index]

    async def commit(self, store: ItemStore) -> None:
        """Apply every leg at once; a failed condition raises `GuardFailed` naming its leg."""
        try:
            await store.transact(self.ops)
        except ConditionFailed as exc:
            raise self.failure(exc) from exc

    def failure(self, exc: ConditionFailed) -> ConditionFailed:
        """`exc` as the `GuardFailed` of the leg whose op it names (itself if none does); it
        keeps the item the engine found (`ConditionFailed.item`)."""
        if not 0 <= exc.index < len(self.names):
            return exc
        return GuardFailed(self.leg_at(exc.index), exc.index, exc.item)
