"""The demo page and its JavaScript client, served by the service itself.

The page is one static file for every combination of features: it asks `/demo.json` for the
project's name and the chosen features, and shows only their controls (rooms, SSE, a login
form), so no template tag decides what it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from .about import NAME

__all__ = ["mount_demo"]

STATIC = Path(__file__).parent / "static"


def mount_demo(app: FastAPI, features: Sequence[str]) -> None:
    router = APIRouter(include_in_schema=False)
    # What the page needs to know, fixed for the app's life: built once, not per request.
    about: dict[str, object] = {"name": NAME, "features": list(features)}

    @router.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @router.get("/demo.json")
    async def demo() -> dict[str, object]:
        return about

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
