"""``GET /``: the web page, and its scripts and styles under ``/static`` (``serve/web/``).

Example:
    >>> app.include_router(router)
    >>> app.mount("/static", static_files(), name="static")
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

#: The page's files (package data of ``streamer.serve.service``).
WEB_DIR = Path(__file__).resolve().parents[1] / "web"

router: APIRouter = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def static_files() -> StaticFiles | None:
    """The ``/static`` app, or ``None`` when the page's folder is missing from the install."""
    return StaticFiles(directory=WEB_DIR) if WEB_DIR.is_dir() else None
