"""Access tokens: JWTs signed and verified with PyJWT, with time taken from the injected clock.

HS256 with one shared secret suits the local shape, and only it: in the cloud shape
(`CNOP_SHAPE=cloud`) an HMAC algorithm is refused at start-up. There only the user service holds
a private key (EdDSA; RS256 and ES256 work the same way), mounted as a file, and every process
verifies every token itself with the public keys alone.

Keys are named by `kid`, the RFC 7638 thumbprint of the public key, so signer and verifiers
agree on names without configuring them. A token names its key in its header, and is verified
with that key only; a token without a `kid`, or naming a key this process does not hold, is
refused. Several public keys can be trusted at once (`CNOP_JWT_PUBLIC_KEYS_DIR`, every `*.pem` in
it), which is how a key is rotated without logging anyone out:

1. add the new public key to the directory every service mounts; roll the services;
2. give the user service the new private key; it signs with it from then on, and tokens signed
   with the old one still verify;
3. once the old tokens have expired (the token TTL), remove the old public key.

`jwks()` publishes the trusted public keys as a JWK set (`/.well-known/jwks.json`).

Revocation is not checked here: after `verify_access_token` the caller looks the token's `jti`
and `generation` up in the store, because only the store knows what has been revoked.
"""

from __future__ import annotations

import base64
import hashlib
import json
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
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from jwt.algorithms import (
    AllowedPrivateKeys,
    AllowedPublicKeys,
    ECAlgorithm,
    OKPAlgorithm,
    RSAAlgorithm,
    get_default_algorithms,
)

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
        # Asymmetric algorithms: the trusted public keys by kid, and the kid this process signs with.
        self._public_keys: dict[str, AllowedPublicKeys] = {}
        self._signing_kid: str | None = None
        self._verified: dict[str, TokenClaims] = {}
        # Who each remembered token belongs to, so a logout or password change can forget it.
        self._by_jti: dict[str, str] = {}
        self._by_subject: dict[str, set[str]] = {}
        #: True when no `jwt_secret` was configured and a random one was made: tokens die with the process.
        self.generated_secret = False
        #: The local shape's secret file, when the secret came from one (see `secret_file`).
        self.secret_file: Path | None = None

        if self._algorithm in HMAC_ALGORITHMS and settings.shape == "cloud":
            raise ValueError(
                f"jwt_algorithm {self._algorithm} is for the local shape only; the cloud shape signs with "
                "EdDSA (set CNOP_JWT_ALGORITHM=EdDSA, CNOP_JWT_PUBLIC_KEYS_DIR and, in the user service, "
                "CNOP_JWT_PRIVATE_KEY_FILE)"
            )
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
            private_key = _load_private_key(private_file) if private_file else None
            self._signing_key = private_key
            trusted = _load_public_keys_dir(settings.jwt_public_keys_dir) if settings.jwt_public_keys_dir else []
            if public_file:
                single = _load_public_key(public_file)
                if private_key is not None and key_id(single) != key_id(private_key.public_key()):
                    raise ValueError("jwt_private_key_file and jwt_public_key_file are not one key pair")
                trusted.append(single)
            if private_key is not None:
                own = private_key.public_key()
                if settings.jwt_public_keys_dir and key_id(own) not in {key_id(k) for k in trusted}:
                    raise ValueError(
                        "the public key of jwt_private_key_file is not in jwt_public_keys_dir: publish it to "
                        "every service before signing with it"
                    )
                trusted.append(own)
                self._signing_kid = key_id(own)
            if not trusted:
                raise ValueError(
                    f"jwt_algorithm {self._algorithm} needs jwt_public_key_file or jwt_public_keys_dir to verify tokens"
                )
            self._public_keys = {key_id(key): key for key in trusted}
            self._verifying_key = trusted[0]
        else:
            allowed = ", ".join(sorted(HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS))
            raise ValueError(f"jwt_algorithm {self._algorithm!r} is not supported; use one of {allowed}")
        self._check_keys()

    @property
    def can_sign(self) -> bool:
        """Whether this service holds a signing key (verify-only services do not)."""
        return self._signing_key is not None

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @property
    def signing_kid(self) -> str | None:
        """The `kid` this process puts in the tokens it signs (None for HMAC or verify-only)."""
        return self._signing_kid

    @property
    def key_ids(self) -> list[str]:
        """The kids of every public key this process accepts (empty for HMAC)."""
        return sorted(self._public_keys)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The trusted public keys as a JWK set (RFC 7517); empty for HMAC, whose secret is never published."""
        algorithm = get_default_algorithms()[self._algorithm]
        keys = []
        for kid in sorted(self._public_keys):
            jwk = dict(algorithm.to_jwk(self._public_keys[kid], as_dict=True))
            jwk.update(kid=kid, alg=self._algorithm, use="sig")
            keys.append(jwk)
        return {"keys": keys}

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
        headers = {"kid": self._signing_kid} if self._signing_kid is not None else None
        token = self._jwt.encode(payload, self._signing_key, algorithm=self._algorithm, headers=headers)
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
        Revocation is the caller's check against the store, on every request (so a revoked token
        is refused by every process at once); `forget_token`/`forget_subject`, called through the
        invalidation channel on logout and password change, drop the remembered entries too.
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
                self._by_jti.clear()
                self._by_subject.clear()
            self._verified[token] = claims
            self._by_jti[claims.jti] = token
            self._by_subject.setdefault(claims.sub, set()).add(token)
        elif self._has_expired(claims.exp.timestamp()):
            self._forget(token)
            raise InvalidToken("Token has expired")
        return claims

    def forget_token(self, jti: str) -> None:
        """Forget the remembered verification of the token `jti` (it was revoked: logout)."""
        token = self._by_jti.get(jti)
        if token is not None:
            self._forget(token)

    def forget_subject(self, subject: str) -> None:
        """Forget every remembered token of `subject` (its tokens were revoked: password change)."""
        for token in list(self._by_subject.get(subject, ())):
            self._forget(token)

    def remembered(self) -> int:
        """How many verified tokens are remembered."""
        return len(self._verified)

    def forget_all(self) -> None:
        self._verified.clear()
        self._by_jti.clear()
        self._by_subject.clear()

    def _forget(self, token: str) -> None:
        claims = self._verified.pop(token, None)
        if claims is None:
            return
        self._by_jti.pop(claims.jti, None)
        tokens = self._by_subject.get(claims.sub)
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                del self._by_subject[claims.sub]

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
                self._key_for(token),
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

    def _key_for(self, token: str) -> AllowedPublicKeys | bytes:
        """The key to verify `token` with: the one its `kid` names (asymmetric), or the secret."""
        if not self._public_keys:
            return self._verifying_key
        kid = jwt.get_unverified_header(token).get("kid")
        key = self._public_keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("Invalid token")
        return key

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
        for key in self._public_keys.values():
            try:
                problem = algorithm.check_key_length(algorithm.prepare_key(key))
            except (jwt.PyJWTError, TypeError, ValueError) as exc:
                raise ValueError(f"a trusted public key does not fit jwt_algorithm {self._algorithm}") from exc
            if problem:
                raise ValueError(problem)
        if self._signing_key is not None:
            probe = self._jwt.encode({"probe": True}, self._signing_key, algorithm=self._algorithm)
            try:
                self._jwt.decode(probe, self._verifying_key, algorithms=[self._algorithm])
            except jwt.InvalidSignatureError as exc:
                raise ValueError("jwt_private_key_file and jwt_public_key_file are not one key pair") from exc


def key_id(key: AllowedPublicKeys) -> str:
    """The key's RFC 7638 JWK thumbprint (SHA-256, base64url): its `kid`, the same in every process."""
    jwk = json.loads(_jwk_of(key))
    required = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({name: jwk[name] for name in required}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


_THUMBPRINT_MEMBERS = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}


def _jwk_of(key: AllowedPublicKeys) -> str:
    if isinstance(key, RSAPublicKey):
        return RSAAlgorithm.to_jwk(key)
    if isinstance(key, EllipticCurvePublicKey):
        return ECAlgorithm.to_jwk(key)
    return OKPAlgorithm.to_jwk(key)


def write_ed25519_key_pair(private_path: Path, public_path: Path) -> str:
    """Make a new Ed25519 key pair as PEM files (the private one readable by its owner only); its kid."""
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public_pem = private_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.touch(mode=0o600, exist_ok=False)
    private_path.write_bytes(private_pem)
    public_path.write_bytes(public_pem)
    return key_id(private_key.public_key())


def existing_key_id(private_path: Path) -> str:
    """The kid of the key pair whose private key is at `private_path`."""
    return key_id(_load_private_key(str(private_path)).public_key())


def _load_public_keys_dir(path: str) -> list[AllowedPublicKeys]:
    """Every `*.pem` public key in the directory (as a mounted Secret or ConfigMap lays them out)."""
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"jwt_public_keys_dir {path} is not a directory")
    files = sorted(p for p in directory.iterdir() if p.suffix == ".pem" and p.is_file())
    if not files:
        raise ValueError(f"jwt_public_keys_dir {path} holds no .pem public key")
    return [_load_public_key(str(p)) for p in files]


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
