"""``GET /``: the browser page (clients/web), and its scripts and styles under ``/web/``.

The page is public, like any static file: it holds no secret, and the endpoints it calls
(`/info`, `/stream`) check the API key themselves. It needs nothing but this server (no CDN), so
it works offline. docs/browser.md describes it.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Final

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

WEB_PACKAGE: Final = "clients"
"""The package holding web/ (package data in pyproject.toml, so an installed server has it)."""

# The file names carry no version, so browsers must ask again (cheaply, by ETag) each time, or
# an upgraded server could run with the old scripts from their cache.
CACHE_CONTROL: Final = "no-cache"


class _RevalidatedFiles(StaticFiles):
    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = CACHE_CONTROL
        return response


def build_router() -> APIRouter:
    """The page's routes. A function, not a module-level router: StaticFiles checks its folder
    when built, and nothing here touches the file system at import time."""
    web_dir = Path(str(files(WEB_PACKAGE) / "web"))
    index_html = web_dir / "index.html"
    router = APIRouter()
    # The assets have their own folder so that /web/ cannot serve index.html at a second
    # address, where its relative links would break.
    router.mount("/web", _RevalidatedFiles(directory=web_dir / "assets"), name="web")

    @router.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(
            index_html, media_type="text/html", headers={"Cache-Control": CACHE_CONTROL}
        )

    return router
