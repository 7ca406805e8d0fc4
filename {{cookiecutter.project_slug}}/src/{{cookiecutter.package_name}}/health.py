"""Liveness and readiness for load balancers and orchestrators.

`/healthz` answers while the process runs. `/readyz` answers 200 only while the service should
get new traffic: not while it is shutting down, nor while a dependency it registered a check
for (Redis, say) is down.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from .hub import Hub

__all__ = ["Readiness", "health_router"]


class Readiness:
    def __init__(self) -> None:
        self.shutting_down = False
        self._checks: dict[str, Callable[[], bool]] = {}

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        """Register a cheap, non-blocking check; it is called on every readiness probe."""
        self._checks[name] = check

    def report(self) -> dict[str, bool]:
        return {"accepting": not self.shutting_down} | {
            name: check() for name, check in self._checks.items()
        }


def health_router(readiness: Readiness, hub: Hub) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        checks = readiness.report()
        ready = all(checks.values())
        return JSONResponse(
            {
                "ready": ready,
                "checks": checks,
                "connections": len(hub),
                "rooms": len(hub.rooms),
            },
            status_code=200 if ready else 503,
        )

    return router
