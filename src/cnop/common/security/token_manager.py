"""Access tokens: JWTs signed and verified with PyJWT, with time taken from the injected clock.

HS256 with one shared secret suits the local shape. In the cloud shape only the user service
holds the private key (EdDSA, RS256, ES256, ...) and every other service verifies with the
public key alone.

Revocation is not checked here: after `verify_access_token` the caller looks the token's `jti`
and `generation` up in the store, because only the store knows what has been revoked.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey, Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from jwt.algorithms import AllowedPrivateKeys, AllowedPublicKeys, get_default_algorithms

from cnop.common.clock import Clock, SystemClock
from cnop.common.config import Settings, get_settings
from cnop.common.exceptions import InvalidToken
from cnop.common.security.secret_file import data_folder, load_or_create_secret

ACCESS_TOKEN_TYPE = "access"
DEFAULT_LEEWAY_SECONDS = 5
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
REQUIRED_CLAIMS = ("sub", "iat", "exp", "jti", "iss", "aud", "type", "role", "gen")

_GENERATED_SECRET_BYTES = 64
_VERIFIED_CACHE_SIZE = 100_000
_LATEST_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z, the last instant a datetime can hold


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A freshly signed access token, shaped for the login response."""

    access_token: str
    expires_in: int
    jti: str
    expires_at: datetime
    token_type: str = "bearer"


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The claims of an access token whose signature, audience, issuer, type and expiry all held."""

    sub: str
    role: str
    jti: str
    generation: int
    iat: datetime
    exp: datetime

    @property
    def username(self) -> str:
        """The user the token was issued to (its `sub`)."""
        return self.sub


class TokenManager:
    """Creates and verifies access tokens with the configured algorithm and key, and only that."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
    ) -> None:
        settings = settings or get_settings()
        self._clock: Clock = clock or SystemClock()
        self._leeway = leeway_seconds
        self._algorithm = settings.jwt_algorithm
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._ttl_seconds = settings.access_token_ttl_seconds
        # Keys shorter than the algorithm needs (RFC 7518 §3.2, NIST SP 800-131A) are refused.
        self._jwt = jwt.PyJWT(options={"enforce_minimum_key_length": True})
        self._signing_key: AllowedPrivateKeys | bytes | None
        self._verifying_key: AllowedPublicKeys | bytes
        self._verified: dict[str, TokenClaims] = {}
        #: True when no `jwt_secret` was configured and a random one was made: tokens die with the process.
        self.generated_secret = False
        #: The local shape's secret file, when the secret came from one (see `secret_file`).
        self.secret_file: Path | None = None

        if self._algorithm in HMAC_ALGORITHMS:
            if settings.jwt_secret is not None:
                secret = settings.jwt_secret.get_secret_value().encode("utf-8")
            elif (folder := data_folder(settings.store)) is not None:
                secret, self.secret_file = load_or_create_secret(folder)
            elif settings.store.startswith("sqlite://"):
                # An in-memory store lives no longer than the process, and neither do its tokens.
                secret = secrets.token_bytes(_GENERATED_SECRET_BYTES)
                self.generated_secret = True
            else:
                raise ValueError(
                    "no signing key: outside the local shape set CNOP_JWT_SECRET (HS256) or "
                    "CNOP_JWT_PRIVATE_KEY_FILE / CNOP_JWT_PUBLIC_KEY_FILE, identically on every instance"
                )
            self._signing_key = secret
            self._verifying_key = secret
        elif self._algorithm in ASYMMETRIC_ALGORITHMS:
            private_file, public_file = settings.jwt_private_key_file, settings.jwt_public_key_file
            self._signing_key = _load_private_key(private_file) if private_file else None
            if public_file:
                self._verifying_key = _load_public_key(public_file)
            elif self._signing_key is not None:
                self._verifying_key = self._signing_key.public_key()
            else:
                raise ValueError(f"jwt_algorithm {self._algorithm} needs jwt_public_key_file to verify tokens")
        else:
            allowed = ", ".join(sorted(HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS))
            raise ValueError(f"jwt_algorithm {self._algorithm!r} is not supported; use one of {allowed}")
        self._check_keys()

    @property
    def can_sign(self) -> bool:
        """Whether this service holds a signing key (verify-only services do not)."""
        return self._signing_key is not None

    def create_access_token(
        self,
        username: str,
        role: str = "customer",
        expires_delta: timedelta | None = None,
        *,
        token_generation: int = 0,
    ) -> AccessToken:
        """Sign an access token for the user, valid from now (by the clock) for the TTL or `expires_delta`."""
        if self._signing_key is None:
            raise RuntimeError("this TokenManager verifies only: jwt_private_key_file is not set")
        if not username:
            raise ValueError("username must not be empty")
        ttl = expires_delta if expires_delta is not None else timedelta(seconds=self._ttl_seconds)
        expires_in = int(ttl.total_seconds())
        if expires_in < 1:
            raise ValueError("expires_delta must be at least one second")
        issued_at = int(self._clock.timestamp())
        expires_at = issued_at + expires_in
        jti = uuid.uuid4().hex
        payload = {
            "sub": username,
            "role": str(role),
            "type": ACCESS_TOKEN_TYPE,
            "gen": token_generation,
            "jti": jti,
            "iat": issued_at,
            "exp": expires_at,
            "iss": self._issuer,
            "aud": self._audience,
        }
        token = self._jwt.encode(payload, self._signing_key, algorithm=self._algorithm)
        return AccessToken(
            access_token=token,
            expires_in=expires_in,
            jti=jti,
            expires_at=datetime.fromtimestamp(expires_at, UTC),
        )

    def verify_access_token(self, token: str) -> TokenClaims:
        """The token's claims, or `InvalidToken` if it is forged, expired, foreign or malformed.

        A token string that verified once is remembered (bounded), so a client's next requests
        cost a dictionary lookup instead of a signature check; expiry is checked every time.
        Revocation is the caller's check against the store, on every request.
        """
        claims = self._verified.get(token)
        if claims is None:
            payload = self.decode_token_payload(token)
            claims = TokenClaims(
                sub=payload["sub"],
                role=payload["role"],
                jti=payload["jti"],
                generation=payload["gen"],
                iat=datetime.fromtimestamp(payload["iat"], UTC),
                exp=datetime.fromtimestamp(payload["exp"], UTC),
            )
            if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = claims
        elif self._has_expired(claims.exp.timestamp()):
            del self._verified[token]
            raise InvalidToken("Token has expired")
        return claims

    def decode_token_payload(self, token: str) -> dict[str, Any]:
        """The token's raw claims after full verification (expiry included); raises `InvalidToken`."""
        payload = self._decode_ignoring_expiry(token)
        if self._has_expired(payload["exp"]):
            raise InvalidToken("Token has expired")
        return payload

    def is_token_expired(self, token: str) -> bool:
        """Whether a genuine token has expired; raises `InvalidToken` if it is not genuine."""
        return self._has_expired(self._decode_ignoring_expiry(token)["exp"])

    def _decode_ignoring_expiry(self, token: str) -> dict[str, Any]:
        """Verify everything but expiry: signature, algorithm, audience, issuer, type and claim shapes."""
        if not isinstance(token, str) or not is_canonical_compact_jws(token):
            raise InvalidToken("Invalid token")
        try:
            payload: dict[str, Any] = self._jwt.decode(
                token,
                self._verifying_key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                # PyJWT would compare times with the system clock; they are checked below instead.
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except (jwt.PyJWTError, ValueError) as exc:  # ValueError: text that is not even UTF-8
            raise InvalidToken("Invalid token") from exc
        if not _has_valid_shape(payload):
            raise InvalidToken("Invalid token")
        if payload["iat"] > self._clock.timestamp() + self._leeway:
            raise InvalidToken("Invalid token")
        nbf = payload.get("nbf")
        if nbf is not None and (not _is_timestamp(nbf) or nbf > self._clock.timestamp() + self._leeway):
            raise InvalidToken("Invalid token")
        return payload

    def _has_expired(self, exp: float) -> bool:
        return exp <= self._clock.timestamp() - self._leeway

    def _check_keys(self) -> None:
        """Fail at start-up, not at the first login, when a key does not fit the algorithm."""
        algorithm = get_default_algorithms()[self._algorithm]
        for key in (self._signing_key, self._verifying_key):
            if key is None:
                continue
            try:
                prepared = algorithm.prepare_key(key)
            except (jwt.PyJWTError, TypeError, ValueError) as exc:
                raise ValueError(f"the configured key does not fit jwt_algorithm {self._algorithm}") from exc
            problem = algorithm.check_key_length(prepared)
            if problem:
                raise ValueError(problem)
        if self._signing_key is not None:
            probe = self._jwt.encode({"probe": True}, self._signing_key, algorithm=self._algorithm)
            try:
                self._jwt.decode(probe, self._verifying_key, algorithms=[self._algorithm])
            except jwt.InvalidSignatureError as exc:
                raise ValueError("jwt_private_key_file and jwt_public_key_file are not one key pair") from exc


def _load_private_key(path: str) -> AllowedPrivateKeys:
    key = load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, RSAPrivateKey | EllipticCurvePrivateKey | Ed25519PrivateKey | Ed448PrivateKey):
        raise ValueError(f"{path} is not an RSA, EC or Ed25519/Ed448 private key")
    return key


def _load_public_key(path: str) -> AllowedPublicKeys:
    key = load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey):
        raise ValueError(f"{path} is not an RSA, EC or Ed25519/Ed448 public key")
    return key


_BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
# Bits of the last character that carry no data, by segment length mod 4 (RFC 4648 §3.5).
_UNUSED_BITS = {2: 0b1111, 3: 0b11}


def is_canonical_compact_jws(token: str) -> bool:
    """Three unpadded base64url segments, each the only spelling of its bytes.

    Decoders accept `=` padding and stray low bits in a segment's last character, so one signed
    token has many spellings; only the one that was issued is accepted (and cached).
    """
    parts = token.split(".")
    if len(parts) != 3:
        return False
    for part in parts:
        if not _SEGMENT.fullmatch(part):
            return False
        rest = len(part) % 4
        if rest == 1:
            return False
        if rest and _BASE64URL.index(part[-1]) & _UNUSED_BITS[rest]:
            return False
    return True


def _is_timestamp(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= _LATEST_TIMESTAMP


def _has_valid_shape(payload: dict[str, Any]) -> bool:
    """Whether the claims this module relies on have the types it relies on."""
    texts_ok = all(isinstance(payload[name], str) and payload[name] for name in ("sub", "jti", "role"))
    generation = payload["gen"]
    generation_ok = isinstance(generation, int) and not isinstance(generation, bool) and generation >= 0
    times_ok = _is_timestamp(payload["iat"]) and _is_timestamp(payload["exp"])
    return texts_ok and generation_ok and times_ok and payload["type"] == ACCESS_TOKEN_TYPE
