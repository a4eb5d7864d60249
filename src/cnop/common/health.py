"""Health checks: named async probes behind `/health` (liveness) and `/health/ready` (readiness).

A check is `async def () -> None`; returning is passing, raising is failing, and taking longer than
its timeout is failing. Checks run concurrently. The endpoints are public, so a failure is shown
as `"check failed"` or `"timed out"` (the exception goes to the log), unless the check raised
`CheckFailed`, whose message is written to be shown.

- `/health`: 200 `healthy` when every liveness check passes, 200 `degraded` when only
  non-critical ones fail, 503 `unhealthy` when a critical one fails.
- `/health/ready`: 200 `healthy` when every readiness check passes, else 503 `unhealthy`;
  a check added with `required=False` is shown but does not make the process unready (200
  `degraded`): the shared-state Redis, which the process can do without for a while.

With `liveness_cache_seconds` > 0, a `/health` answer (status and body, already rendered) is
given again to every request for that long, so a busy front end or load balancer polling it
costs no store round trip; a change of health shows at most that much later. Readiness is never
kept: a load balancer's decision to send traffic always sees the checks run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from cnop import __version__
from cnop.common.jsonio import ExactJSONResponse, RenderedJSONResponse, dumps
from cnop.common.logging import get_logger
from cnop.common.web.routing import LeanRoute

HealthProbe = Callable[[], Awaitable[None]]
HealthStatus = Literal["healthy", "degraded", "unhealthy"]

_log = get_logger("cnop.health")
_NO_STORE = {"Cache-Control": "no-store"}


class CheckFailed(Exception):
    """Raised by a check to fail with a message that is safe to show to anyone."""


class CheckResult(BaseModel):
    status: Literal["ok", "fail"]
    detail: str | None = None


class HealthReport(BaseModel):
    status: HealthStatus
    service: str
    version: str
    checks: dict[str, CheckResult]


@dataclass(frozen=True, slots=True)
class _Check:
    name: str
    probe: HealthProbe
    timeout: float
    critical: bool
    liveness: bool
    readiness: bool
    required: bool


class HealthCheck:
    """A registry of named checks for one service."""

    def __init__(
        self,
        service: str,
        version: str = __version__,
        default_timeout: float = 2.0,
        *,
        liveness_cache_seconds: float = 0.0,
    ) -> None:
        self.service = service
        self.version = version
        self.default_timeout = default_timeout
        self.liveness_cache_seconds = liveness_cache_seconds
        self._checks: dict[str, _Check] = {}

    def add(
        self,
        name: str,
        probe: HealthProbe,
        *,
        critical: bool = False,
        liveness: bool = True,
        readiness: bool = True,
        timeout: float | None = None,
        required: bool = True,
    ) -> None:
        """Register `probe`; `critical` makes its failure turn `/health` into a 503, `required=False`
        keeps a failing readiness check from making `/health/ready` a 503."""
        if name in self._checks:
            raise ValueError(f"health check {name!r} is already registered")
        self._checks[name] = _Check(
            name, probe, self.default_timeout if timeout is None else timeout, critical, liveness, readiness, required
        )

    async def liveness(self) -> tuple[int, dict[str, Any]]:
        """The `/health` status code and body."""
        checks = [c for c in self._checks.values() if c.liveness]
        results = await self._run(checks)
        failed = [c for c in checks if results[c.name]["status"] == "fail"]
        status: HealthStatus = "healthy"
        if any(c.critical for c in failed):
            status = "unhealthy"
        elif failed:
            status = "degraded"
        return (503 if status == "unhealthy" else 200), self._body(status, results)

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """The `/health/ready` status code and body."""
        checks = [c for c in self._checks.values() if c.readiness]
        results = await self._run(checks)
        failed = [c for c in checks if results[c.name]["status"] == "fail"]
        if any(c.required for c in failed):
            return 503, self._body("unhealthy", results)
        return 200, self._body("degraded" if failed else "healthy", results)

    def _body(self, status: HealthStatus, results: dict[str, dict[str, str]]) -> dict[str, Any]:
        return {"status": status, "service": self.service, "version": self.version, "checks": results}

    async def _run(self, checks: list[_Check]) -> dict[str, dict[str, str]]:
        outcomes = await asyncio.gather(*(self._run_one(c) for c in checks))
        return {c.name: outcome for c, outcome in zip(checks, outcomes, strict=True)}

    @staticmethod
    async def _run_one(check: _Check) -> dict[str, str]:
        try:
            async with asyncio.timeout(check.timeout):
                await check.probe()
        except TimeoutError:
            _log.warning("health_check_timed_out", check=check.name, timeout_seconds=check.timeout)
            return {"status": "fail", "detail": f"timed out after {check.timeout:g}s"}
        except CheckFailed as exc:
            _log.warning("health_check_failed", check=check.name, reason=str(exc))
            return {"status": "fail", "detail": str(exc) or "check failed"}
        except Exception:
            _log.exception("health_check_failed", check=check.name)
            return {"status": "fail", "detail": "check failed"}
        return {"status": "ok"}


def health_router(health: HealthCheck) -> APIRouter:
    """`GET /health` and `GET /health/ready` for `health`."""
    router = APIRouter(tags=["health"], route_class=LeanRoute)
    unhealthy: dict[int | str, dict[str, Any]] = {503: {"model": HealthReport, "description": "Unhealthy"}}

    kept: tuple[float, int, bytes] | None = None  # (when, status, rendered body) of the last /health

    @router.get("/health", response_model=HealthReport, responses=unhealthy)
    async def read_health() -> RenderedJSONResponse:
        nonlocal kept
        now = monotonic()
        if kept is None or now - kept[0] >= health.liveness_cache_seconds:
            status_code, body = await health.liveness()
            kept = (now, status_code, dumps(body))
        return RenderedJSONResponse(kept[2], status_code=kept[1], headers=_NO_STORE)

    @router.get("/health/ready", response_model=HealthReport, responses=unhealthy)
    async def read_readiness() -> ExactJSONResponse:
        status_code, body = await health.readiness()
        return ExactJSONResponse(body, status_code=status_code, headers=_NO_STORE)

    return router
