"""The demo page and its JavaScript client, served by the service itself."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["mount_demo"]

STATIC = Path(__file__).parent / "static"


def mount_demo(app: FastAPI) -> None:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
