"""The web page at / (static/, no CDN) and the offline API docs at /docs (fastapi-offline)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from pocovid.server.deps import UrlPrefix

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


def mount_static(app: FastAPI) -> None:
    """The page's files at /static; Swagger UI's bundled files at /offline-docs when installed."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    with contextlib.suppress(ImportError):
        import fastapi_offline

        app.mount("/offline-docs", StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"),
                  name="offline-docs")


@router.get("/")
async def index():
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/docs")
async def docs(request: Request, pre: UrlPrefix):
    try:
        import fastapi_offline  # noqa: F401
    except ImportError:
        return HTMLResponse(f"<!doctype html><title>pocovid API</title><p>The interactive API page needs the "
                            f"<code>fastapi-offline</code> package (<code>pip install 'pocovid[serve]'</code>). "
                            f"The API description is at <a href='{pre}/openapi.json'>/openapi.json</a>.</p>")
    return get_swagger_ui_html(openapi_url=f"{pre}/openapi.json", title="pocovid API",
                               swagger_js_url=f"{pre}/offline-docs/swagger-ui-bundle.js",
                               swagger_css_url=f"{pre}/offline-docs/swagger-ui.css",
                               swagger_favicon_url=f"{pre}/static/favicon.svg",
                               swagger_ui_parameters=request.app.swagger_ui_parameters)
