"""The local shape's JWT secret file (edge review finding 9)."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from cnop.common.config import Settings
from cnop.common.exceptions import InvalidToken
from cnop.common.security.secret_file import InsecureSecretFile, data_folder, load_or_create_secret
from cnop.common.security.token_manager import TokenManager


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **{"jwt_secret": None, **values})


@pytest.mark.parametrize(
    ("url", "folder"),
    [
        ("sqlite:///./data/cnop.db", Path("./data")),
        ("sqlite:///data/cnop.db", Path("data")),
        ("sqlite:////var/lib/cnop/cnop.db", Path("/var/lib/cnop")),
        ("sqlite://:memory:", None),
        ("dynamodb", None),
    ],
)
def test_the_data_folder_is_the_sqlite_file_s_folder(url: str, folder: Path | None) -> None:
    assert data_folder(url) == folder


def test_the_first_start_makes_a_private_secret_that_later_starts_reuse(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/data/cnop.db"
    first = TokenManager(settings(store=store))
    path = tmp_path / "data" / "jwt-secret"
    assert first.secret_file == path and not first.generated_secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) == 128
    token = first.create_access_token("alice").access_token
    again = TokenManager(settings(store=store))  # a restart
    assert again.verify_access_token(token).sub == "alice"
    assert [p.name for p in path.parent.iterdir()] == ["jwt-secret"]  # no temporary file left behind


def test_an_explicit_secret_wins_over_the_file(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/cnop.db"
    from_file = TokenManager(settings(store=store))
    explicit = TokenManager(settings(store=store, jwt_secret=SecretStr("explicit-secret-long-enough-for-hs256-0123456789")))
    assert explicit.secret_file is None
    with pytest.raises(InvalidToken):
        explicit.verify_access_token(from_file.create_access_token("alice").access_token)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666])
def test_a_secret_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create_secret(tmp_path)
    os.chmod(tmp_path / "jwt-secret", mode)
    with pytest.raises(InsecureSecretFile, match="may be read by others"):
        TokenManager(settings(store=f"sqlite:///{tmp_path}/cnop.db"))


def test_a_secret_file_that_is_a_symlink_or_too_short_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("x" * 64)
    os.chmod(target, 0o600)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "jwt-secret").symlink_to(target)
    with pytest.raises(InsecureSecretFile, match="regular file"):
        load_or_create_secret(tmp_path / "a")
    (tmp_path / "b").mkdir()
    short = tmp_path / "b" / "jwt-secret"
    short.write_text("too-short")
    os.chmod(short, 0o600)
    with pytest.raises(InsecureSecretFile, match="fewer than 32"):
        load_or_create_secret(tmp_path / "b")


def test_outside_the_local_shape_a_key_must_be_configured() -> None:
    with pytest.raises(ValueError, match="outside the local shape set CNOP_JWT_SECRET"):
        TokenManager(settings(store="dynamodb"))


def _start(folder: str, queue: Any) -> None:
    secret, _ = load_or_create_secret(Path(folder))
    queue.put(secret)


@pytest.mark.system
def test_processes_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    folder = tmp_path / "data"
    processes = [ctx.Process(target=_start, args=(str(folder), queue)) for _ in range(6)]
    for p in processes:
        p.start()
    secrets = {queue.get(timeout=60) for _ in processes}
    for p in processes:
        p.join(60)
        assert p.exitcode == 0
    assert len(secrets) == 1
    assert secrets == {(folder / "jwt-secret").read_bytes().strip()}
    assert [p.name for p in folder.iterdir()] == ["jwt-secret"]
