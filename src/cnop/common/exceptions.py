"""One error hierarchy: every error a client can see has a stable `code` and an HTTP status.

This module is the only place error codes are written down.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CnopError(Exception):
    """An error with a meaning for the client; rendered as RFC 9457 problem details."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = detail or self.title
        self.extra = extra
        super().__init__(self.detail)


# --- 4xx: the request -------------------------------------------------------------------------


class ValidationFailed(CnopError):
    code = "validation_error"
    status = 422
    title = "Request validation failed"

    def __init__(self, detail: str | None = None, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors or []

    @classmethod
    def field(cls, field: str, message: str) -> ValidationFailed:
        return cls(f"{field}: {message}", errors=[{"field": field, "message": message}])


class NotFound(CnopError):
    code = "not_found"
    status = 404
    title = "Not found"


class MethodNotAllowed(CnopError):
    code = "method_not_allowed"
    status = 405
    title = "Method not allowed"


class Conflict(CnopError):
    code = "conflict"
    status = 409
    title = "Conflict"


class BusinessRuleViolation(CnopError):
    """A well-formed request that the rules of the business refuse."""

    code = "business_rule_violation"
    status = 422
    title = "Request refused"


# --- the request's size and pace (the server layer and the body bound) ---------------------------


class RequestTimeout(CnopError):
    code = "request_timeout"
    status = 408
    title = "Request head not received in time"


class BodyTooLarge(CnopError):
    code = "body_too_large"
    status = 413
    title = "Request body too large"


class UriTooLong(CnopError):
    code = "uri_too_long"
    status = 414
    title = "Request target too long"


class HeadersTooLarge(CnopError):
    code = "headers_too_large"
    status = 431
    title = "Request headers too large"


# --- authentication and authorisation ----------------------------------------------------------


class AuthenticationRequired(CnopError):
    code = "not_authenticated"
    status = 401
    title = "Authentication required"


class InvalidToken(AuthenticationRequired):
    code = "invalid_token"
    title = "Invalid or expired token"


class InvalidCredentials(AuthenticationRequired):
    code = "invalid_credentials"
    title = "Invalid username or password"


class Forbidden(CnopError):
    code = "forbidden"
    status = 403
    title = "Forbidden"


class LoginBlocked(Forbidden):
    code = "login_blocked"
    title = "Too many failed logins from this address; try again later"


class InvalidApiKey(AuthenticationRequired):
    code = "invalid_api_key"
    title = "Invalid, expired or revoked API key"


class InsufficientScope(Forbidden):
    code = "insufficient_scope"
    title = "The API key lacks the scope this request needs"


class RateLimited(CnopError):
    code = "rate_limited"
    status = 429
    title = "Too many requests"


class LoginThrottled(RateLimited):
    code = "login_throttled"
    title = "Too many failed logins for this account; try again later"


class TooManyStreams(RateLimited):
    code = "too_many_streams"
    title = "Too many open event streams"


# --- accounts ---------------------------------------------------------------------------------


class UsernameTaken(Conflict):
    code = "username_taken"
    title = "Username already exists"


class EmailTaken(Conflict):
    code = "email_taken"
    title = "Email already registered"


class UserNotFound(NotFound):
    code = "user_not_found"
    title = "User not found"


class WeakPassword(BusinessRuleViolation):
    code = "weak_password"
    title = "Password does not meet the strength rules"


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"
    title = "API key not found"


class ApiKeyLimitReached(BusinessRuleViolation):
    code = "api_key_limit_reached"
    title = "Too many live API keys"


# --- money ------------------------------------------------------------------------------------


class InsufficientFunds(BusinessRuleViolation):
    code = "insufficient_funds"
    title = "Insufficient funds"


class InsufficientHoldings(BusinessRuleViolation):
    code = "insufficient_holdings"
    title = "Insufficient holdings"


class InsufficientInventory(BusinessRuleViolation):
    code = "insufficient_inventory"
    title = "Insufficient house inventory"


class DailyLimitExceeded(BusinessRuleViolation):
    code = "daily_limit_exceeded"
    title = "Daily limit exceeded"


class IdempotencyKeyReused(BusinessRuleViolation):
    code = "idempotency_key_reused"
    title = "Idempotency key reused with a different request"


class IdempotencyInProgress(Conflict):
    code = "idempotency_in_progress"
    title = "A request with this idempotency key is still being processed"


# --- assets and orders ------------------------------------------------------------------------


class AssetNotFound(NotFound):
    code = "asset_not_found"
    title = "Asset not found"


class AssetNotFoundForOrder(BusinessRuleViolation):
    code = "asset_not_found"
    title = "Asset not found"


class AssetNotTradeable(BusinessRuleViolation):
    code = "asset_not_tradeable"
    title = "Asset is not tradeable"


class HoldingNotFound(NotFound):
    code = "holding_not_found"
    title = "No holding of this asset"


class OrderNotFound(NotFound):
    code = "order_not_found"
    title = "Order not found"


class OrderNotCancellable(Conflict):
    code = "order_not_cancellable"
    title = "Order can no longer be cancelled"


class OrderValueExceedsLimit(BusinessRuleViolation):
    code = "order_value_exceeds_limit"
    title = "Order value exceeds the limit"


class PriceProtection(BusinessRuleViolation):
    code = "price_protection"
    title = "The market price moved past the order's price bound"


class InvalidOrder(BusinessRuleViolation):
    code = "invalid_order"
    title = "Invalid order"


# --- 5xx: outages -----------------------------------------------------------------------------


class ServiceUnavailable(CnopError):
    code = "service_unavailable"
    status = 503
    title = "Service unavailable"


class TooManyConnections(ServiceUnavailable):
    code = "too_many_connections"
    title = "Too many open connections"


class PriceUnavailable(ServiceUnavailable):
    code = "price_unavailable"
    title = "No fresh market price is available"


class StoreUnavailable(ServiceUnavailable):
    """The store failed or timed out: an outage, answered 503 so the client may retry."""

    code = "store_unavailable"
    title = "The data store is not answering"


# --- the store (never shown to clients as such) ------------------------------------------------


class StoreError(Exception):
    """The store failed; a bug or an outage, never a business answer."""


class ConditionFailed(StoreError):
    """A write's condition did not hold; `index` is the failing op's position in the transaction.

    `item` is the op's item as the engine found it when the condition failed, where the engine
    tells (SQLite always, DynamoDB for an update); None when it does not, or when there was none.
    A caller that retries on a changed item may start from it instead of reading it again.
    """

    def __init__(self, index: int, message: str = "condition failed", *, item: dict[str, Any] | None = None) -> None:
        self.index = index
        self.item = item
        super().__init__(f"{message} (op {index})")


class TransactionConflict(StoreError):
    """Another transaction touched the same items at the same time; safe to retry."""
