"""Logging in through the login guard: the one path the API and the web app both take."""

from __future__ import annotations

from cnop.common.exceptions import InvalidCredentials
from cnop.common.security import AccessToken
from cnop.container import Container


async def guarded_login(container: Container, username: str, password: str, ip: str | None) -> AccessToken:
    """Check the guard for `ip`, verify the password, count the outcome; a block is 403 `login_blocked`."""
    address = ip or "unknown"
    await container.login_guard.check(address)
    try:
        token = await container.accounts.login(username, password, ip=address)
    except InvalidCredentials:
        await container.login_guard.record_failure(address)
        container.metrics.record_login("failure")
        raise
    await container.login_guard.record_success(address)
    container.metrics.record_login("success")
    return token
