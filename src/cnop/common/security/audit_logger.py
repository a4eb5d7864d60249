"""Security audit events, written as structured `audit.*` events to the `cnop.audit` logger.

Methods take names, addresses and reasons only; no method accepts a password or a token.
"""

from __future__ import annotations

from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

AUDIT_LOGGER_NAME = "cnop.audit"

# Usernames and user agents come from the client: cap them so one request cannot flood the log.
_MAX_UNTRUSTED_LENGTH = 256


class AuditLogger:
    """Records who logged in, failed, logged out, changed a password, registered or was refused."""

    def __init__(self) -> None:
        # Resolved on each call, so logging configured (or captured in tests) later still applies.
        self._log: FilteringBoundLogger = structlog.get_logger(AUDIT_LOGGER_NAME)

    def log_login_success(self, username: str, ip_address: str | None = None, user_agent: str | None = None) -> None:
        """A user logged in."""
        self._info("audit.login_success", username=username, ip_address=ip_address, user_agent=user_agent)

    def log_login_failure(
        self, username: str, ip_address: str | None = None, reason: str = "invalid_credentials"
    ) -> None:
        """A login was refused; `username` is what the client sent, which may name no user."""
        self._warning("audit.login_failure", username=username, ip_address=ip_address, reason=reason)

    def log_logout(self, username: str, ip_address: str | None = None) -> None:
        """A user logged out."""
        self._info("audit.logout", username=username, ip_address=ip_address)

    def log_password_change(self, username: str, ip_address: str | None = None) -> None:
        """A user changed their password."""
        self._info("audit.password_change", username=username, ip_address=ip_address)

    def log_access_denied(self, username: str | None, resource: str, reason: str) -> None:
        """A request was refused access to a resource; `username` is None for anonymous requests."""
        self._warning("audit.access_denied", username=username, resource=resource, reason=reason)

    def log_registration(self, username: str, ip_address: str | None = None) -> None:
        """A new user registered."""
        self._info("audit.registration", username=username, ip_address=ip_address)

    def log_token_revoked(self, username: str, jti: str, reason: str = "logout") -> None:
        """A token was revoked; `jti` is the token's id, never the token itself."""
        self._info("audit.token_revoked", username=username, jti=jti, reason=reason)

    def log_api_key_created(self, username: str, key_id: str, scopes: str, ip_address: str | None = None) -> None:
        """A user made an API key; `key_id` names it, the secret is never logged."""
        self._info("audit.api_key_created", username=username, key_id=key_id, scopes=scopes, ip_address=ip_address)

    def log_api_key_new_ip(self, username: str, key_id: str, ip_address: str | None) -> None:
        """An API key was used from an address it had not been used from before."""
        self._warning("audit.api_key_new_ip", username=username, key_id=key_id, ip_address=ip_address)

    def log_api_key_revoked(self, username: str, key_id: str, reason: str = "deleted") -> None:
        """An API key stopped working: deleted by its owner, expired and purged, or a password change."""
        self._info("audit.api_key_revoked", username=username, key_id=key_id, reason=reason)

    def _info(self, event: str, **fields: str | None) -> None:
        self._log.info(event, **_clean(fields))

    def _warning(self, event: str, **fields: str | None) -> None:
        self._log.warning(event, **_clean(fields))


def _clean(fields: dict[str, str | None]) -> dict[str, Any]:
    """The fields, with client-supplied text capped and stripped of control characters."""
    cleaned: dict[str, Any] = {"logger": AUDIT_LOGGER_NAME}
    for name, value in fields.items():
        if value is None:
            cleaned[name] = None
        else:
            printable = "".join(char if char.isprintable() else "?" for char in value)
            cleaned[name] = printable[:_MAX_UNTRUSTED_LENGTH]
    return cleaned
