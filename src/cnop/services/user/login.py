"""Password checks through the login guards: the one path the API and the web app both take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from cnop.common.exceptions import InvalidCredentials
from cnop.common.metrics import Metrics
from cnop.common.security import AccessToken
from cnop.common.security.login_guard import AccountThrottle, LoginGuard
from cnop.services.dependencies import AccountLoginThrottle, Accounts, AppMetrics, IpLoginGuard
from cnop.services.user.schemas import PasswordChangeRequest
from cnop.services.user.service import AccountService, Principal


@dataclass(frozen=True, slots=True)
class GuardedLogin:
    """Logins and password changes, counted by the per-address guard and the per-account throttle."""

    accounts: AccountService
    login_guard: LoginGuard
    account_throttle: AccountThrottle
    metrics: Metrics

    async def login(self, username: str, password: str, ip: str | None) -> AccessToken:
        """Check the guards for `ip` and the account, verify the password, count the outcome.

        A blocked address is 403 `login_blocked`; an account inside its delay is 429 `login_throttled`.
        """
        address = ip or "unknown"
        await self.login_guard.check(address)
        await self.account_throttle.check(username)
        try:
            token = await self.accounts.login(username, password, ip=address)
        except InvalidCredentials:
            await self.login_guard.record_failure(address)
            await self.account_throttle.record_failure(username)
            self.metrics.record_login("failure")
            raise
        await self.login_guard.record_success(address)
        await self.account_throttle.record_success(username)
        self.metrics.record_login("success")
        return token

    async def change_password(self, principal: Principal, change: PasswordChangeRequest, ip: str | None) -> AccessToken:
        """Change the password; a wrong current password is a password guess, counted like a failed login."""
        address = ip or "unknown"
        await self.login_guard.check(address)
        await self.account_throttle.check(principal.username)
        try:
            return await self.accounts.change_password(principal, change, ip=address)
        except InvalidCredentials:
            await self.login_guard.record_failure(address)
            await self.account_throttle.record_failure(principal.username)
            raise


async def guarded_login(
    accounts: Accounts, login_guard: IpLoginGuard, account_throttle: AccountLoginThrottle, metrics: AppMetrics
) -> GuardedLogin:
    return GuardedLogin(accounts, login_guard, account_throttle, metrics)


Logins = Annotated[GuardedLogin, Depends(guarded_login)]
