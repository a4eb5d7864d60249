"""`GET /.well-known/jwks.json`: the keys that verify access tokens, and only public ones."""

from __future__ import annotations

import jwt

from cnop.common.security.token_manager import write_ed25519_key_pair
from tests.conftest import StoreFactory
from tests.support.api import Api, open_api
from tests.support.wire import read


async def test_with_hs256_the_key_set_is_empty(api: Api) -> None:
    response = await api.client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert read(response) == {"keys": []}
    assert response.headers["cache-control"] == "public, max-age=300"


async def test_with_eddsa_login_tokens_name_a_published_key_that_verifies_them(
    store_factory: StoreFactory, tmp_path
) -> None:
    public_dir = tmp_path / "public"
    old_kid = write_ed25519_key_pair(tmp_path / "old.key", public_dir / "old.pem")
    kid = write_ed25519_key_pair(tmp_path / "new.key", public_dir / "new.pem")
    api, lifespan = await open_api(
        store_factory,
        jwt_secret=None,
        jwt_algorithm="EdDSA",
        jwt_private_key_file=str(tmp_path / "new.key"),
        jwt_public_keys_dir=str(public_dir),
    )
    try:
        jwks = read(await api.client.get("/.well-known/jwks.json"))
        assert sorted(k["kid"] for k in jwks["keys"]) == sorted([old_kid, kid])
        assert all(set(k) == {"kty", "crv", "x", "kid", "alg", "use"} for k in jwks["keys"])

        headers = (await api.register())[1]
        token = headers["Authorization"].removeprefix("Bearer ")
        assert jwt.get_unverified_header(token)["kid"] == kid
        key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid))
        payload = jwt.decode(token, key, algorithms=["EdDSA"], audience="cnop-api", issuer="cnop")
        profile = await api.client.get("/api/v1/auth/profile", headers=headers)
        assert profile.status_code == 200
        assert read(profile)["username"] == payload["sub"]
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)
