"""Tokens of the cloud shape: EdDSA signed by the user service alone, kids, rotation, JWKS, no HS256."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from typer.testing import CliRunner

from cnop.cli import app as cli_app
from cnop.common.clock import FakeClock
from cnop.common.config import Settings
from cnop.common.exceptions import InvalidToken
from cnop.common.security import TokenManager
from cnop.common.security.token_manager import key_id, write_ed25519_key_pair


@dataclass
class KeyPair:
    private: Path
    public: Path
    kid: str


def _pair(directory: Path, name: str) -> KeyPair:
    private, public = directory / "private" / f"{name}.key", directory / "public-all" / f"{name}.pem"
    return KeyPair(private, public, write_ed25519_key_pair(private, public))


def _public_dir(directory: Path, *pairs: KeyPair) -> Path:
    """A directory holding exactly these public keys, as a mounted Secret would."""
    target = directory / ("public-" + "-".join(p.public.stem for p in pairs))
    target.mkdir(exist_ok=True)
    for pair in pairs:
        shutil.copy(pair.public, target / pair.public.name)
    return target


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"shape": "cloud", "jwt_algorithm": "EdDSA", "jwt_secret": None, **overrides}
    return Settings(_env_file=None, **values)


def _user_service(pair: KeyPair, public_dir: Path, clock: FakeClock) -> TokenManager:
    return TokenManager(
        _settings(jwt_private_key_file=str(pair.private), jwt_public_keys_dir=str(public_dir)), clock=clock
    )


def _verifier(public_dir: Path, clock: FakeClock) -> TokenManager:
    return TokenManager(_settings(jwt_public_keys_dir=str(public_dir)), clock=clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def old(tmp_path: Path) -> KeyPair:
    return _pair(tmp_path, "old")


@pytest.fixture
def new(tmp_path: Path) -> KeyPair:
    return _pair(tmp_path, "new")


@pytest.fixture
def stranger(tmp_path: Path) -> KeyPair:
    return _pair(tmp_path, "stranger")


def _header(token: str) -> dict[str, Any]:
    return jwt.get_unverified_header(token)


def test_the_kid_is_the_rfc_7638_thumbprint() -> None:
    # RFC 8037 appendix A.3: the thumbprint of the example Ed25519 key.
    x = base64.urlsafe_b64decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    assert key_id(Ed25519PublicKey.from_public_bytes(x)) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_the_private_key_file_is_readable_by_its_owner_only(old: KeyPair) -> None:
    assert os.stat(old.private).st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        write_ed25519_key_pair(old.private, old.public)


def test_a_token_signed_by_the_user_service_names_its_key_and_verifies_in_every_other_service(
    tmp_path: Path, old: KeyPair, clock: FakeClock
) -> None:
    keys = _public_dir(tmp_path, old)
    user = _user_service(old, keys, clock)
    token = user.create_access_token("alice", role="customer").access_token
    assert _header(token) == {"alg": "EdDSA", "kid": old.kid, "typ": "JWT"}
    assert user.signing_kid == old.kid
    for service in ("order", "inventory", "insights", "gateway", "worker"):
        verifier = _verifier(keys, clock)
        assert not verifier.can_sign, service
        claims = verifier.verify_access_token(token)
        assert (claims.sub, claims.role) == ("alice", "customer")
        with pytest.raises(RuntimeError, match="verifies only"):
            verifier.create_access_token("alice")


def test_during_a_rotation_old_and_new_tokens_both_verify_and_after_it_the_old_are_refused(
    tmp_path: Path, old: KeyPair, new: KeyPair, clock: FakeClock
) -> None:
    # Before: only the old key.
    before = _public_dir(tmp_path, old)
    old_token = _user_service(old, before, clock).create_access_token("alice").access_token

    # Step 1: every service trusts both keys. Step 2: the user service signs with the new one.
    both = _public_dir(tmp_path, old, new)
    verifier = _verifier(both, clock)
    assert verifier.key_ids == sorted([old.kid, new.kid])
    new_token = _user_service(new, both, clock).create_access_token("bob").access_token
    assert _header(new_token)["kid"] == new.kid
    assert verifier.verify_access_token(old_token).sub == "alice"  # nobody is logged out
    assert verifier.verify_access_token(new_token).sub == "bob"

    # Step 3: the old key is withdrawn; its tokens are refused, the new ones still verify.
    after = _verifier(_public_dir(tmp_path, new), clock)
    with pytest.raises(InvalidToken):
        after.verify_access_token(old_token)
    assert after.verify_access_token(new_token).sub == "bob"


def test_a_token_signed_by_a_key_nobody_trusts_is_refused(
    tmp_path: Path, old: KeyPair, stranger: KeyPair, clock: FakeClock
) -> None:
    verifier = _verifier(_public_dir(tmp_path, old), clock)
    forged = _user_service(stranger, _public_dir(tmp_path, stranger), clock).create_access_token("alice")
    with pytest.raises(InvalidToken):
        verifier.verify_access_token(forged.access_token)


def test_a_token_claiming_a_trusted_kid_but_signed_by_another_key_is_refused(
    tmp_path: Path, old: KeyPair, stranger: KeyPair, clock: FakeClock
) -> None:
    verifier = _verifier(_public_dir(tmp_path, old), clock)
    payload = _claims(clock)
    private = load_pem_private_key(stranger.private.read_bytes(), password=None)
    token = jwt.encode(payload, private, algorithm="EdDSA", headers={"kid": old.kid})
    with pytest.raises(InvalidToken):
        verifier.verify_access_token(token)


def test_a_token_without_a_kid_is_refused_in_the_cloud_shape(tmp_path: Path, old: KeyPair, clock: FakeClock) -> None:
    verifier = _verifier(_public_dir(tmp_path, old), clock)
    private = load_pem_private_key(old.private.read_bytes(), password=None)
    token = jwt.encode(_claims(clock), private, algorithm="EdDSA")  # right key, no kid
    with pytest.raises(InvalidToken):
        verifier.verify_access_token(token)


@pytest.mark.parametrize("secret_source", ["a-shared-secret", "public-key-bytes"])
def test_an_hs256_token_is_refused_in_the_cloud_shape(
    tmp_path: Path, old: KeyPair, clock: FakeClock, secret_source: str
) -> None:
    verifier = _verifier(_public_dir(tmp_path, old), clock)
    # Including the classic confusion: HMAC keyed with the (public) verification key itself.
    secret = old.public.read_bytes() if secret_source == "public-key-bytes" else b"x" * 64
    token = _hs256_by_hand(_claims(clock), secret, old.kid)  # PyJWT itself refuses to make the confused one
    with pytest.raises(InvalidToken):
        verifier.verify_access_token(token)


def test_the_cloud_shape_refuses_to_start_with_hs256() -> None:
    with pytest.raises(ValueError, match="local shape only"):
        TokenManager(Settings(_env_file=None, shape="cloud", jwt_secret="s" * 64))
    # The local shape keeps HS256 (its default).
    assert TokenManager(Settings(_env_file=None, jwt_secret="s" * 64)).algorithm == "HS256"


def test_a_signer_whose_public_key_is_not_published_does_not_start(
    tmp_path: Path, old: KeyPair, new: KeyPair, clock: FakeClock
) -> None:
    with pytest.raises(ValueError, match="publish it"):
        _user_service(new, _public_dir(tmp_path, old), clock)


def test_an_empty_or_missing_keys_directory_is_a_configuration_error(tmp_path: Path, clock: FakeClock) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no \.pem"):
        _verifier(empty, clock)
    with pytest.raises(ValueError, match="not a directory"):
        _verifier(tmp_path / "absent", clock)


def test_the_jwks_lists_every_trusted_key_and_an_outside_verifier_can_use_it(
    tmp_path: Path, old: KeyPair, new: KeyPair, clock: FakeClock
) -> None:
    both = _public_dir(tmp_path, old, new)
    user = _user_service(new, both, FakeClock(datetime.now(UTC)))  # PyJWT checks expiry by the system clock
    jwks = user.jwks()
    assert sorted(k["kid"] for k in jwks["keys"]) == sorted([old.kid, new.kid])
    for key in jwks["keys"]:
        assert set(key) == {"kty", "crv", "x", "kid", "alg", "use"}
        assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
        assert "d" not in key  # never the private part
    # Someone holding only the published set verifies our token, picking the key by kid.
    token = user.create_access_token("carol").access_token
    by_kid = {k["kid"]: jwt.PyJWK(k) for k in json.loads(json.dumps(jwks))["keys"]}
    key = by_kid[_header(token)["kid"]]
    payload = jwt.decode(token, key, algorithms=["EdDSA"], audience="cnop-api", issuer="cnop")
    assert payload["sub"] == "carol"


def test_hs256_publishes_no_keys() -> None:
    assert TokenManager(Settings(_env_file=None, jwt_secret="s" * 64)).jwks() == {"keys": []}


def test_cnop_keys_generate_writes_a_pair_and_prints_its_kid(tmp_path: Path, clock: FakeClock) -> None:
    private, public = tmp_path / "signing" / "jwt.key", tmp_path / "public" / "jwt.pem"
    result = CliRunner().invoke(cli_app, ["keys", "generate", "--private-key", str(private), "--public-key", str(public)])
    assert result.exit_code == 0, result.output
    kid = result.output.strip()
    manager = TokenManager(
        _settings(jwt_private_key_file=str(private), jwt_public_keys_dir=str(public.parent)), clock=clock
    )
    assert manager.signing_kid == kid
    again = CliRunner().invoke(cli_app, ["keys", "generate", "--private-key", str(private), "--public-key", str(public)])
    assert again.exit_code == 1
    assert manager.key_ids == [kid]  # the existing key was not replaced


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_by_hand(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


def _claims(clock: FakeClock) -> dict[str, Any]:
    now = int(clock.timestamp())
    return {
        "sub": "alice",
        "role": "admin",
        "type": "access",
        "gen": 0,
        "jti": "0123456789abcdef",
        "iat": now,
        "exp": now + 600,
        "iss": "cnop",
        "aud": "cnop-api",
    }
