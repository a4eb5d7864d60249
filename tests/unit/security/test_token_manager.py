"""TokenManager: claims round trip, every way a token can be forged or stale, keys and the clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from cnop.common.clock import FakeClock
from cnop.common.config import Settings
from cnop.common.exceptions import InvalidToken
from cnop.common.security import AccessToken, TokenClaims, TokenManager
from cnop.common.security.token_manager import DEFAULT_LEEWAY_SECONDS, REQUIRED_CLAIMS

SECRET = "s3cret-for-tests-only-0123456789abcdef"
TTL = 3600


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"jwt_secret": SECRET, "access_token_ttl_seconds": TTL, **overrides}
    return Settings(_env_file=None, **values)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_json(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value).encode())


def _claims(clock: FakeClock, **overrides: Any) -> dict[str, Any]:
    now = int(clock.timestamp())
    claims: dict[str, Any] = {
        "sub": "alice",
        "role": "customer",
        "type": "access",
        "gen": 0,
        "jti": "0123456789abcdef",
        "iat": now,
        "exp": now + TTL,
        "iss": "cnop",
        "aud": "cnop-api",
    }
    claims.update(overrides)
    return claims


def _sign_hs256(claims: dict[str, Any], secret: str | bytes = SECRET) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return jwt.encode(claims, key, algorithm="HS256")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def manager(clock: FakeClock) -> TokenManager:
    return TokenManager(_settings(), clock=clock)


# --- keys for the asymmetric algorithms ----------------------------------------------------------


def _write_pair(directory: Path, name: str, private_key: Any) -> tuple[str, str]:
    private_path, public_path = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    private_path.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public_path.write_bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(private_path), str(public_path)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    directory = tmp_path_factory.mktemp("keys")
    return {
        "ed25519": _write_pair(directory, "ed25519", ed25519.Ed25519PrivateKey.generate()),
        "ed25519_other": _write_pair(directory, "ed25519_other", ed25519.Ed25519PrivateKey.generate()),
        "rsa": _write_pair(directory, "rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "rsa_small": _write_pair(
            directory, "rsa_small", rsa.generate_private_key(public_exponent=65537, key_size=1024)
        ),
        "p256": _write_pair(directory, "p256", ec.generate_private_key(ec.SECP256R1())),
    }


def _asymmetric(
    keys: dict[str, tuple[str, str]], clock: FakeClock, algorithm: str, name: str, *, sign: bool = True
) -> TokenManager:
    private_file, public_file = keys[name]
    return TokenManager(
        _settings(
            jwt_secret=None,
            jwt_algorithm=algorithm,
            jwt_private_key_file=private_file if sign else None,
            jwt_public_key_file=public_file,
        ),
        clock=clock,
    )


# --- round trip ------------------------------------------------------------------------------------


def test_a_created_token_verifies_to_the_claims_it_was_made_with(
    manager: TokenManager, clock: FakeClock
) -> None:
    token = manager.create_access_token("alice")
    assert isinstance(token, AccessToken)
    assert token.token_type == "bearer"
    assert token.expires_in == TTL
    assert token.expires_at == clock.now() + timedelta(seconds=TTL)

    claims = manager.verify_access_token(token.access_token)
    assert claims == TokenClaims(
        sub="alice",
        role="customer",
        jti=token.jti,
        generation=0,
        iat=clock.now(),
        exp=clock.now() + timedelta(seconds=TTL),
    )
    assert claims.username == "alice"


def test_the_payload_carries_every_standard_claim(manager: TokenManager, clock: FakeClock) -> None:
    token = manager.create_access_token("bob", role="admin", token_generation=3)
    payload = manager.decode_token_payload(token.access_token)
    assert payload == {
        "sub": "bob",
        "role": "admin",
        "type": "access",
        "gen": 3,
        "jti": token.jti,
        "iat": int(clock.timestamp()),
        "exp": int(clock.timestamp()) + TTL,
        "iss": "cnop",
        "aud": "cnop-api",
    }
    assert jwt.get_unverified_header(token.access_token) == {"alg": "HS256", "typ": "JWT"}


def test_expires_delta_overrides_the_configured_ttl(manager: TokenManager, clock: FakeClock) -> None:
    token = manager.create_access_token("alice", expires_delta=timedelta(minutes=5))
    assert token.expires_in == 300
    assert manager.verify_access_token(token.access_token).exp == clock.now() + timedelta(minutes=5)


@pytest.mark.parametrize("delta", [timedelta(0), timedelta(seconds=-10), timedelta(milliseconds=500)])
def test_an_expiry_under_one_second_is_refused(manager: TokenManager, delta: timedelta) -> None:
    with pytest.raises(ValueError, match="at least one second"):
        manager.create_access_token("alice", expires_delta=delta)


def test_an_empty_username_is_refused(manager: TokenManager) -> None:
    with pytest.raises(ValueError, match="username"):
        manager.create_access_token("")


def test_every_token_gets_its_own_jti(manager: TokenManager) -> None:
    jtis = {manager.create_access_token("alice").jti for _ in range(50)}
    assert len(jtis) == 50


# --- forged tokens -------------------------------------------------------------------------------------


def test_a_token_signed_with_another_secret_is_refused(manager: TokenManager, clock: FakeClock) -> None:
    forged = _sign_hs256(_claims(clock), secret="another-secret-of-enough-length-0123456789")
    with pytest.raises(InvalidToken):
        manager.verify_access_token(forged)
    with pytest.raises(InvalidToken):
        manager.is_token_expired(forged)


def test_a_token_with_a_tampered_payload_is_refused(manager: TokenManager, clock: FakeClock) -> None:
    header, _, signature = manager.create_access_token("alice").access_token.split(".")
    tampered = f"{header}.{_b64_json(_claims(clock, role='admin'))}.{signature}"
    with pytest.raises(InvalidToken):
        manager.verify_access_token(tampered)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_an_unsigned_alg_none_token_is_refused(manager: TokenManager, clock: FakeClock, alg: str) -> None:
    unsigned = f"{_b64_json({'alg': alg, 'typ': 'JWT'})}.{_b64_json(_claims(clock))}."
    with pytest.raises(InvalidToken):
        manager.verify_access_token(unsigned)
    with pytest.raises(InvalidToken):
        manager.decode_token_payload(unsigned)
    with pytest.raises(InvalidToken):
        manager.is_token_expired(unsigned)


def test_a_token_with_another_hmac_algorithm_is_refused(manager: TokenManager, clock: FakeClock) -> None:
    token = jwt.encode(_claims(clock), SECRET.encode() * 2, algorithm="HS512")
    with pytest.raises(InvalidToken):
        manager.verify_access_token(token)


@pytest.mark.parametrize(
    ("algorithm", "key_name"), [("EdDSA", "ed25519"), ("RS256", "rsa"), ("ES256", "p256")]
)
def test_an_hs256_token_is_refused_when_an_asymmetric_algorithm_is_configured(
    keys: dict[str, tuple[str, str]], clock: FakeClock, algorithm: str, key_name: str
) -> None:
    manager = _asymmetric(keys, clock, algorithm, key_name)
    # The classic confusion attack: HMAC-sign with the public key, which every verifier can read.
    public_pem = Path(keys[key_name][1]).read_bytes()
    signing_input = f"{_b64_json({'alg': 'HS256', 'typ': 'JWT'})}.{_b64_json(_claims(clock))}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidToken):
        manager.verify_access_token(f"{signing_input}.{_b64(signature)}")
    with pytest.raises(InvalidToken):
        manager.verify_access_token(_sign_hs256(_claims(clock)))


# --- asymmetric keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "key_name"), [("EdDSA", "ed25519"), ("RS256", "rsa"), ("ES256", "p256")]
)
def test_asymmetric_tokens_round_trip_and_verify_with_the_public_key_alone(
    keys: dict[str, tuple[str, str]], clock: FakeClock, algorithm: str, key_name: str
) -> None:
    signer = _asymmetric(keys, clock, algorithm, key_name)
    verifier = _asymmetric(keys, clock, algorithm, key_name, sign=False)
    assert signer.can_sign
    assert not verifier.can_sign
    token = signer.create_access_token("alice", role="admin")
    assert jwt.get_unverified_header(token.access_token)["alg"] == algorithm
    assert verifier.verify_access_token(token.access_token).role == "admin"
    assert not verifier.is_token_expired(token.access_token)
    with pytest.raises(RuntimeError, match="verifies only"):
        verifier.create_access_token("alice")


def test_the_public_key_is_derived_when_only_the_private_key_is_configured(
    keys: dict[str, tuple[str, str]], clock: FakeClock
) -> None:
    manager = TokenManager(
        _settings(jwt_secret=None, jwt_algorithm="EdDSA", jwt_private_key_file=keys["ed25519"][0]),
        clock=clock,
    )
    token = manager.create_access_token("alice")
    assert manager.verify_access_token(token.access_token).sub == "alice"


def test_a_token_signed_by_another_key_pair_is_refused(
    keys: dict[str, tuple[str, str]], clock: FakeClock
) -> None:
    ours = _asymmetric(keys, clock, "EdDSA", "ed25519", sign=False)
    theirs = _asymmetric(keys, clock, "EdDSA", "ed25519_other")
    with pytest.raises(InvalidToken):
        ours.verify_access_token(theirs.create_access_token("alice").access_token)


def test_a_token_of_another_asymmetric_algorithm_is_refused(
    keys: dict[str, tuple[str, str]], clock: FakeClock
) -> None:
    rs256 = _asymmetric(keys, clock, "RS256", "rsa")
    ps256 = _asymmetric(keys, clock, "PS256", "rsa")
    with pytest.raises(InvalidToken):
        rs256.verify_access_token(ps256.create_access_token("alice").access_token)


# --- configuration errors surface at start-up ------------------------------------------------------


def test_an_asymmetric_algorithm_without_keys_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="jwt_public_key_file"):
        TokenManager(_settings(jwt_algorithm="EdDSA"))


@pytest.mark.parametrize("algorithm", ["none", "HS1", "RS1", "eddsa"])
def test_an_unsupported_algorithm_is_a_configuration_error(algorithm: str) -> None:
    with pytest.raises(ValueError, match="not supported"):
        TokenManager(_settings(jwt_algorithm=algorithm))


def test_a_short_hmac_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="HMAC key"):
        TokenManager(_settings(jwt_secret="too-short"))


def test_a_key_of_the_wrong_kind_is_a_configuration_error(keys: dict[str, tuple[str, str]]) -> None:
    private_file, public_file = keys["ed25519"]
    with pytest.raises(ValueError, match="does not fit"):
        TokenManager(
            _settings(
                jwt_algorithm="RS256", jwt_private_key_file=private_file, jwt_public_key_file=public_file
            )
        )


def test_a_small_rsa_key_is_a_configuration_error(keys: dict[str, tuple[str, str]]) -> None:
    with pytest.raises(ValueError, match="2048"):
        TokenManager(_settings(jwt_algorithm="RS256", jwt_public_key_file=keys["rsa_small"][1]))


def test_keys_from_two_pairs_are_a_configuration_error(keys: dict[str, tuple[str, str]]) -> None:
    with pytest.raises(ValueError, match="not one key pair"):
        TokenManager(
            _settings(
                jwt_algorithm="EdDSA",
                jwt_private_key_file=keys["ed25519"][0],
                jwt_public_key_file=keys["ed25519_other"][1],
            )
        )


def test_without_a_secret_or_a_data_folder_a_random_one_is_generated_per_manager(clock: FakeClock) -> None:
    in_memory = {"jwt_secret": None, "store": "sqlite://:memory:"}
    first = TokenManager(_settings(**in_memory), clock=clock)
    second = TokenManager(_settings(**in_memory), clock=clock)
    assert first.generated_secret and first.secret_file is None
    assert not TokenManager(_settings(), clock=clock).generated_secret
    token = first.create_access_token("alice").access_token
    assert first.verify_access_token(token).sub == "alice"
    with pytest.raises(InvalidToken):
        second.verify_access_token(token)


# --- audience, issuer, type, claim shapes ----------------------------------------------------------


def test_a_token_for_another_audience_is_refused(manager: TokenManager, clock: FakeClock) -> None:
    other = TokenManager(_settings(jwt_audience="someone-else"), clock=clock)
    with pytest.raises(InvalidToken):
        manager.verify_access_token(other.create_access_token("alice").access_token)


def test_a_token_from_another_issuer_is_refused(manager: TokenManager, clock: FakeClock) -> None:
    other = TokenManager(_settings(jwt_issuer="evil"), clock=clock)
    with pytest.raises(InvalidToken):
        manager.verify_access_token(other.create_access_token("alice").access_token)


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
def test_a_token_missing_a_required_claim_is_refused(
    manager: TokenManager, clock: FakeClock, claim: str
) -> None:
    claims = _claims(clock)
    del claims[claim]
    with pytest.raises(InvalidToken):
        manager.verify_access_token(_sign_hs256(claims))


@pytest.mark.parametrize(
    "overrides",
    [
        {"type": "refresh"},
        {"sub": ""},
        {"sub": 42},
        {"jti": ""},
        {"jti": 7},
        {"role": None},
        {"role": ["admin"]},
        {"gen": -1},
        {"gen": True},
        {"gen": "0"},
        {"iat": "now"},
        {"iat": True},
        {"exp": "tomorrow"},
        {"exp": 10**20},
        {"nbf": "soon"},
        {"aud": ["other-api"]},
    ],
)
def test_a_token_with_a_malformed_claim_is_refused(
    manager: TokenManager, clock: FakeClock, overrides: dict[str, Any]
) -> None:
    with pytest.raises(InvalidToken):
        manager.verify_access_token(_sign_hs256(_claims(clock, **overrides)))


def test_a_hand_made_token_with_every_claim_right_is_accepted(
    manager: TokenManager, clock: FakeClock
) -> None:
    assert manager.verify_access_token(_sign_hs256(_claims(clock))).sub == "alice"


# --- time, from the injected clock -------------------------------------------------------------------


def test_a_token_is_valid_until_its_expiry_plus_the_leeway(manager: TokenManager, clock: FakeClock) -> None:
    token = manager.create_access_token("alice").access_token
    clock.advance(TTL + DEFAULT_LEEWAY_SECONDS - 1)
    assert not manager.is_token_expired(token)
    assert manager.verify_access_token(token).sub == "alice"


def test_an_expired_token_is_refused(manager: TokenManager, clock: FakeClock) -> None:
    token = manager.create_access_token("alice").access_token
    clock.advance(TTL + DEFAULT_LEEWAY_SECONDS + 60)
    assert manager.is_token_expired(token)
    with pytest.raises(InvalidToken, match="expired"):
        manager.verify_access_token(token)
    with pytest.raises(InvalidToken, match="expired"):
        manager.decode_token_payload(token)


def test_a_fresh_token_is_not_expired(manager: TokenManager) -> None:
    assert not manager.is_token_expired(manager.create_access_token("alice").access_token)


def test_a_token_issued_in_the_future_is_refused(manager: TokenManager, clock: FakeClock) -> None:
    issuer_clock = FakeClock(clock.now() + timedelta(minutes=10))
    ahead = TokenManager(_settings(), clock=issuer_clock)
    with pytest.raises(InvalidToken):
        manager.verify_access_token(ahead.create_access_token("alice").access_token)


def test_a_token_not_yet_valid_is_refused(manager: TokenManager, clock: FakeClock) -> None:
    token = _sign_hs256(_claims(clock, nbf=int(clock.timestamp()) + 600))
    with pytest.raises(InvalidToken):
        manager.verify_access_token(token)


@pytest.mark.parametrize(
    "moment", [datetime(2001, 1, 1, tzinfo=UTC), datetime(2090, 6, 1, tzinfo=UTC)], ids=["past", "future"]
)
def test_time_comes_from_the_injected_clock_not_the_system_clock(moment: datetime) -> None:
    clock = FakeClock(moment)
    manager = TokenManager(_settings(), clock=clock)
    token = manager.create_access_token("alice").access_token
    assert manager.verify_access_token(token).iat == moment
    assert not manager.is_token_expired(token)
    clock.advance(TTL + DEFAULT_LEEWAY_SECONDS + 1)
    assert manager.is_token_expired(token)


# --- garbage ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        " ",
        "garbage",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "Bearer x.y.z",
        "....",
        "e30.e30.",
        "W10.W10.",
        "bnVsbA.bnVsbA.",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        "\ud800.\udfff.x",
        "é.é.é",
        "x" * 10_000,
    ],
)
def test_garbage_is_an_invalid_token(manager: TokenManager, garbage: str) -> None:
    with pytest.raises(InvalidToken):
        manager.verify_access_token(garbage)
    with pytest.raises(InvalidToken):
        manager.is_token_expired(garbage)


@pytest.mark.parametrize("not_text", [None, b"a.b.c", 42])
def test_a_token_that_is_not_text_is_invalid(manager: TokenManager, not_text: Any) -> None:
    with pytest.raises(InvalidToken):
        manager.verify_access_token(not_text)


@settings(max_examples=200, deadline=None)
@given(st.text() | st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-_=")).map(".".join))
def test_arbitrary_text_is_an_invalid_token(text: str) -> None:
    manager = TokenManager(_settings(), clock=FakeClock())
    with pytest.raises(InvalidToken):
        manager.verify_access_token(text)
