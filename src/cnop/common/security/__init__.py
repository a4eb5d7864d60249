"""Security: password hashing and strength, access tokens, and the audit log."""

from cnop.common.security.audit_logger import AuditLogger
from cnop.common.security.password_manager import PasswordManager
from cnop.common.security.token_manager import AccessToken, TokenClaims, TokenManager

__all__ = ["AccessToken", "AuditLogger", "PasswordManager", "TokenClaims", "TokenManager"]
