"""Working as an IAM role: temporary credentials from STS, refreshed by botocore before expiry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

from aiobotocore.credentials import AioDeferredRefreshableCredentials

StsClientFactory = Callable[[], AbstractAsyncContextManager[Any]]


class AssumeRole:
    """Fetches temporary credentials for a role from STS (the `refresh_using` of botocore's
    refreshable credentials, which call it again before the credentials expire)."""

    def __init__(
        self, sts_client: StsClientFactory, role_arn: str, session_name: str, duration_seconds: int = 3600
    ) -> None:
        self._sts_client = sts_client
        self.role_arn = role_arn
        self.session_name = session_name
        self.duration_seconds = duration_seconds

    async def __call__(self) -> dict[str, str]:
        async with self._sts_client() as sts:
            response = await sts.assume_role(
                RoleArn=self.role_arn,
                RoleSessionName=self.session_name,
                DurationSeconds=self.duration_seconds,
            )
        credentials = response["Credentials"]
        expiration = credentials["Expiration"]
        return {
            "access_key": credentials["AccessKeyId"],
            "secret_key": credentials["SecretAccessKey"],
            "token": credentials["SessionToken"],
            "expiry_time": expiration.isoformat() if isinstance(expiration, datetime) else str(expiration),
        }


def role_credentials(fetch: Callable[[], Awaitable[dict[str, str]]], time_fetcher: Any = None) -> Any:
    """Credentials fetched on first use and refreshed by botocore from 15 minutes before expiry
    (mandatory from 10 minutes before)."""
    if time_fetcher is None:
        return AioDeferredRefreshableCredentials(refresh_using=fetch, method="assume-role")
    return AioDeferredRefreshableCredentials(refresh_using=fetch, method="assume-role", time_fetcher=time_fetcher)
