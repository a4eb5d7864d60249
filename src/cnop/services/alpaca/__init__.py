"""An Alpaca-compatible adapter (`/alpaca`): bots written for alpaca-py run unchanged.

Every route is an adapter over the same use cases as the native API (`/api/v1`): the same
ledger, holds, invariants and idempotency. Nothing here trades on its own.
"""
