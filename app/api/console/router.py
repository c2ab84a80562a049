"""Serves the console's files and the few server facts the page cannot learn from the API.

The files are public even when an API key is configured (they hold no data; the page asks
for the key and sends it on every API call), so :func:`public_paths` lists each one exactly
for the key guard's allow-list: nothing under ``/console/`` that is not a shipped file is
reachable without the key.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.errors import request_context
from app.api.openapi import http_routes
from app.core.errors import APIError

STATIC = Path(__file__).parent / "static"
PREFIX = "/console/"
CONFIG_PATH = "/console/config"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page runs only its own files and talks only to this server: an injected script could
# otherwise read the API key from session storage and send it elsewhere. Its players play
# blob: URLs only (the speech it fetched, the clip it recorded or was given).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
ADMIN_LOAD_ROUTE = "/admin/models/{model_id:path}/load"

router = APIRouter(include_in_schema=False)


@cache
def assets() -> dict[str, Path]:
    """URL path → file, for every shipped file of a served type (``/`` is index.html)."""
    files = {
        PREFIX + p.relative_to(STATIC).as_posix(): p
        for p in sorted(STATIC.rglob("*"))
        if p.is_file() and p.suffix in CONTENT_TYPES
    }
    files["/"] = STATIC / "index.html"
    return files


def public_paths() -> frozenset[str]:
    """Exact paths the key guard lets through: the page and its files, nothing else."""
    return frozenset(assets())


def _file_response(path: Path) -> Response:
    return Response(
        path.read_bytes(), media_type=CONTENT_TYPES[path.suffix], headers=SECURITY_HEADERS
    )


@router.get("/")
async def console_page() -> Response:
    """The single page; its scripts and styles come from ``/console/...``."""
    return _file_response(assets()["/"])


@router.get(CONFIG_PATH)
async def console_config(request: Request) -> JSONResponse:
    """What the page shows or hides: admin buttons only where the admin routes exist,
    metric charts only where ``/metrics`` is served. Guarded by the key like the API."""
    app = request.app
    routes = {(path, method) for path, methods in http_routes(app) for method in methods}
    settings = app.state.settings
    return JSONResponse({
        "admin": (ADMIN_LOAD_ROUTE, "POST") in routes,
        "metrics": ("/metrics", "GET") in routes,
        "keep_alive_default_s": settings.keep_alive_s,
        "htdi": request_context(request).htdi(),
    })


@router.get(PREFIX + "{name:path}")
async def console_file(name: str) -> Response:
    path = assets().get(PREFIX + name)
    if path is None:
        raise APIError(404, f"No console file named {name!r}.", code="not_found")
    return _file_response(path)
