"""API key secrets: random, 256 bits, stored only as HMAC-SHA-256 under a server-side key.

A bot sends its secret with every request, so checking it must cost microseconds: a keyed fast
hash, not a password hash (Argon2 would add tens of milliseconds to each request). The secret
is random with 256 bits of entropy, so nothing is gained by making a guess slow; the server-side
key means a copy of the store alone cannot even confirm a guess. Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from cnop.common.config import Settings
from cnop.common.ids import new_id

SECRET_BYTES = 32  # 256 bits
KEY_ID_PREFIX = "CK"
KEY_ID_PATTERN = re.compile(r"^CK[0-9A-HJKMNP-TV-Z]{26}$")
SECRET_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")
_DERIVATION_LABEL = b"cnop api-key hmac v1"


class ApiKeyHasher:
    """Makes key ids and secrets, and hashes and checks secrets under the server's key."""

    def __init__(self, settings: Settings) -> None:
        if settings.api_key_secret is not None:
            key = settings.api_key_secret.get_secret_value().encode()
        elif settings.jwt_secret is not None:
            # A key of its own, derived from the JWT secret, so one secret never serves two purposes.
            key = hmac.new(settings.jwt_secret.get_secret_value().encode(), _DERIVATION_LABEL, hashlib.sha256).digest()
        else:
            key = secrets.token_bytes(32)
            self.generated_key = True
        self._key = key
        # An unknown key id is checked against this, so it costs what a known one costs.
        self._dummy_hash = self.hash(KEY_ID_PREFIX + "0" * 26, secrets.token_urlsafe(SECRET_BYTES))

    generated_key = False

    @staticmethod
    def new_key_id() -> str:
        return KEY_ID_PREFIX + new_id()

    @staticmethod
    def new_secret() -> str:
        return secrets.token_urlsafe(SECRET_BYTES)

    def hash(self, key_id: str, secret: str) -> str:
        """The stored form of a secret, bound to its key id (a hash moved to another key is useless)."""
        message = key_id.encode("ascii", "replace") + b"\0" + secret.encode("utf-8", "replace")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def verify(self, key_id: str, secret: str, stored_hash: str | None) -> bool:
        """True when `secret` is the key's; compared in constant time, also when the key is unknown."""
        expected = stored_hash if stored_hash is not None else self._dummy_hash
        matches = hmac.compare_digest(self.hash(key_id, secret), expected)
        return matches and stored_hash is not None
