"""Passwords: the strength rules, Argon2id hashing, legacy bcrypt verification, off-loop hashing.

Hashing is deliberately slow, so the async methods run it in a bounded thread pool and never
on the event loop. Create one `PasswordManager` per process and `close()` it at shutdown.
"""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog
from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from cnop.common.config import Settings, get_settings
from cnop.common.exceptions import WeakPassword

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 128
SPECIAL_CHARACTERS = "!@#$%^&*()-_=+[]{};:,.?/~"
HASH_THREAD_NAME_PREFIX = "cnop-password-hash"

# bcrypt only ever hashed the first 72 bytes; bcrypt >= 5 refuses longer input instead.
_BCRYPT_MAX_PASSWORD_BYTES = 72

_log = structlog.get_logger("cnop.security")


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """Argon2id cost: iterations, memory in KiB and lanes; the defaults take ~90 ms on 2 cores."""

    time_cost: int = 2
    memory_cost: int = 64 * 1024
    parallelism: int = 2


# Cheap parameters so that test suites can hash many passwords; never use them in production.
TEST_ARGON2_PARAMS = Argon2Params(time_cost=1, memory_cost=1024, parallelism=1)


class _LegacyBcryptHasher(BcryptHasher):
    """Verifies legacy bcrypt hashes exactly as they were made: over the password's first 72 bytes."""

    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        secret = password.encode("utf-8") if isinstance(password, str) else password
        return super().verify(secret[:_BCRYPT_MAX_PASSWORD_BYTES], hash)


class PasswordManager:
    """Hashes new passwords with Argon2id, verifies Argon2id and legacy bcrypt hashes, checks strength."""

    def __init__(self, settings: Settings | None = None, *, argon2_params: Argon2Params | None = None) -> None:
        settings = settings or get_settings()
        params = argon2_params or Argon2Params()
        argon2 = Argon2Hasher(
            time_cost=params.time_cost, memory_cost=params.memory_cost, parallelism=params.parallelism
        )
        # The first hasher makes every new hash; the others only verify (and trigger an upgrade).
        self._password_hash = PasswordHash((argon2, _LegacyBcryptHasher()))
        self._executor = ThreadPoolExecutor(
            max_workers=settings.password_hash_workers, thread_name_prefix=HASH_THREAD_NAME_PREFIX
        )
        # A hash of a random secret nobody knows, verified in place of an unknown user's hash.
        self._dummy_hash = self._password_hash.hash(secrets.token_urlsafe(32))

    # --- strength ---------------------------------------------------------------------------

    def validate_password_strength(self, password: str) -> None:
        """Raise `WeakPassword` naming every rule the password breaks; the password is never altered."""
        problems: list[str] = []
        if len(password) < MIN_PASSWORD_LENGTH:
            problems.append(f"be at least {MIN_PASSWORD_LENGTH} characters long")
        elif len(password) > MAX_PASSWORD_LENGTH:
            problems.append(f"be at most {MAX_PASSWORD_LENGTH} characters long")
        if not any(char.isupper() for char in password):
            problems.append("contain an upper-case letter")
        if not any(char.islower() for char in password):
            problems.append("contain a lower-case letter")
        if not any(char.isdecimal() for char in password):
            problems.append("contain a digit")
        if not any(char in SPECIAL_CHARACTERS for char in password):
            problems.append(f"contain one of {SPECIAL_CHARACTERS}")
        if not _is_encodable(password):
            problems.append("be valid Unicode text")
        if problems:
            raise WeakPassword("Password must " + "; ".join(problems) + ".")

    # --- hashing and verifying (blocking) ---------------------------------------------------

    def hash_password(self, password: str) -> str:
        """Hash a password with Argon2id; blocks for the whole hash, so prefer `hash_password_async`."""
        return self._password_hash.hash(password)

    def verify_password(self, password: str, hashed: str) -> bool:
        """Whether the password matches the hash (Argon2 or legacy bcrypt); false for unreadable hashes."""
        return self.verify_and_update(password, hashed)[0]

    def verify_and_update(self, password: str, hashed: str) -> tuple[bool, str | None]:
        """Verify, and when the hash is bcrypt or has outdated parameters also return a new Argon2id hash."""
        try:
            return self._password_hash.verify_and_update(password, hashed)
        except UnknownHashError:
            _log.warning("security.password_hash_unrecognised")
            return False, None
        except ValueError:  # text that cannot be encoded as UTF-8, or a malformed bcrypt salt
            return False, None

    def dummy_verify(self, password: str) -> bool:
        """Spend the time of one real verification for a user that does not exist; always false."""
        self.verify_password(password, self._dummy_hash)
        return False

    # --- hashing and verifying (async, in the bounded pool) ---------------------------------

    async def hash_password_async(self, password: str) -> str:
        """`hash_password`, run in the hashing thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.hash_password, password)

    async def verify_password_async(self, password: str, hashed: str) -> bool:
        """`verify_password`, run in the hashing thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.verify_password, password, hashed)

    async def verify_and_update_async(self, password: str, hashed: str) -> tuple[bool, str | None]:
        """`verify_and_update`, run in the hashing thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.verify_and_update, password, hashed)

    async def dummy_verify_async(self, password: str) -> bool:
        """`dummy_verify`, run in the hashing thread pool: an unknown user costs what a known one does."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.dummy_verify, password)

    def close(self) -> None:
        """Stop the hashing threads once the hashes already running have finished."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def _is_encodable(password: str) -> bool:
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
