"""Password checks through the login guards: the one path the API and the web app both take."""

from __future__ import annotations

from cnop.common.exceptions import InvalidCredentials
from cnop.common.security import AccessToken
from cnop.container import Container
from cnop.services.user.schemas import PasswordChangeRequest
from cnop.services.user.service import Principal


async def guarded_login(container: Container, username: str, password: str, ip: str | None) -> AccessToken:
    """Check the guards for `ip` and the account, verify the password, count the outcome.

    A blocked address is 403 `login_blocked`; an account inside its delay is 429 `login_throttled`.
    """
    address = ip or "unknown"
    await container.login_guard.check(address)
    await container.account_throttle.check(username)
    try:
        token = await container.accounts.login(username, password, ip=address)
    except InvalidCredentials:
        await container.login_guard.record_failure(address)
        await container.account_throttle.record_failure(username)
        container.metrics.record_login("failure")
        raise
    await container.login_guard.record_success(address)
    await container.account_throttle.record_success(username)
    container.metrics.record_login("success")
    return token


async def guarded_password_change(
    container: Container, principal: Principal, change: PasswordChangeRequest, ip: str | None
) -> AccessToken:
    """Change the password; a wrong current password is a password guess, counted like a failed login."""
    address = ip or "unknown"
    await container.login_guard.check(address)
    await container.account_throttle.check(principal.username)
    try:
        return await container.accounts.change_password(principal, change, ip=address)
    except InvalidCredentials:
        await container.login_guard.record_failure(address)
        await container.account_throttle.record_failure(principal.username)
        raise
