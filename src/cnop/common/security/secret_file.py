"""The local shape's signing secret: made on first start, kept in the data folder, 0600.

With `CNOP_JWT_SECRET` unset, a secret per process would log everyone out at every restart. In
the local shape (a SQLite file) the secret is instead generated once and kept next to the
database as `jwt-secret`. It is created atomically (written to a private temporary file, then
hard-linked into place, which fails if the file exists), so two processes starting together
agree on one secret; a file that the group or others may read is refused, since anyone who can
read it can mint tokens. An explicit `CNOP_JWT_SECRET` always wins; outside the local shape a key
must be configured (`TokenManager` refuses to start otherwise).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from pathlib import Path

SECRET_FILE_NAME = "jwt-secret"
_SECRET_BYTES = 64
_MIN_SECRET_CHARS = 32


class InsecureSecretFile(ValueError):
    """The secret file exists but is unusable: readable by others, not a regular file, or too short."""


def data_folder(store_url: str) -> Path | None:
    """The folder of a SQLite store file (`sqlite:///data/cnop.db` -> `data`), else None."""
    if not store_url.startswith("sqlite://"):
        return None
    path = store_url.removeprefix("sqlite://")
    if ":memory:" in path or not path:
        return None
    # sqlite:///relative/path -> relative/path; sqlite:////abs/path -> /abs/path
    path = path[1:] if path.startswith("/") else path
    return Path(path).parent


def load_or_create_secret(folder: Path) -> tuple[bytes, Path]:
    """The secret in `folder/jwt-secret` (made now if missing) and the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SECRET_FILE_NAME
    if not os.path.lexists(path):
        _create(path)
    return _read(path), path


def _create(path: Path) -> None:
    secret = secrets.token_hex(_SECRET_BYTES).encode("ascii") + b"\n"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secret)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)  # atomic, and never replaces: the first process to link wins
    except FileExistsError:
        pass
    except OSError:
        # A file system without hard links: exclusive create, the content follows at once.
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secret)
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _read(path: Path, wait_seconds: float = 2.0) -> bytes:
    deadline = time.monotonic() + wait_seconds
    while True:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            raise InsecureSecretFile(f"{path} must be a regular file")
        if info.st_mode & 0o077:
            raise InsecureSecretFile(
                f"{path} may be read by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"run `chmod 600 {path}` or set CNOP_JWT_SECRET"
            )
        secret = path.read_bytes().strip()
        if len(secret) >= _MIN_SECRET_CHARS:
            return secret
        if time.monotonic() >= deadline:  # an empty file past a racing creator's write: broken
            raise InsecureSecretFile(f"{path} holds fewer than {_MIN_SECRET_CHARS} characters")
        time.sleep(0.05)
