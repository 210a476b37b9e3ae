"""OpenAPI pieces shared by the endpoints that take an upload or a token."""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import HTTPException
from fastapi.responses import FileResponse

from pocovid.server.headers import CSP_FILES
from pocovid.server.schemas import ErrorBody

FILE_PROP = {"type": "string", "format": "binary",
             "description": "The recording: video (MP4, MOV, AVI, MPEG, MKV, WebM, WMV, GIF), image (PNG, JPEG, "
                            "BMP, TIFF) or DICOM. The type is read from the content; DICOM is de-identified "
                            "before it is stored."}
#: The largest `offset` a list endpoint takes (422 past it; SQLite integers are 64-bit).
MAX_OFFSET = 1_000_000_000

UPLOAD_ERRORS = {400: {"model": ErrorBody, "description": "Bad upload (not multipart, no file, empty, truncated)"},
                 403: {"model": ErrorBody, "description": "No X-Requested-With header, token or JSON body (CSRF)"},
                 413: {"model": ErrorBody, "description": "Upload larger than the limit"},
                 415: {"model": ErrorBody, "description": "Not a recording pocovid reads (by content)"},
                 503: {"model": ErrorBody, "description": "The database is busy (locked); nothing was stored"},
                 507: {"model": ErrorBody, "description": "The server's disk is (nearly) full"}}
AUTH_ERRORS = {401: {"model": ErrorBody, "description": "Bearer token missing"},
               403: {"model": ErrorBody, "description": "Wrong token, or no token configured on the server"}}
NOT_FOUND = {404: {"model": ErrorBody}}
FILE_BODY = {200: {"content": {"application/octet-stream": {}}}}
CACHE_PRIVATE = {"Cache-Control": "private, max-age=3600"}


def artifact_response(base: Path, name: str, cache: dict | None = None) -> FileResponse:
    """The file `name` inside the folder `base` (an analysis's or an exam's), 404 when it resolves
    outside it or is not a file; HTML and SVG with the artifacts' Content-Security-Policy. `cache`:
    its Cache-Control header (default: private, an hour)."""
    base = base.resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise HTTPException(404, "no such file")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    headers = dict(cache or CACHE_PRIVATE)
    if media_type in ("text/html", "image/svg+xml"):
        headers["Content-Security-Policy"] = CSP_FILES
    return FileResponse(path, media_type=media_type, headers=headers)


def multipart_doc(properties: dict, required: list[str]) -> dict:
    """`openapi_extra` of an endpoint that reads its multipart body itself (as a stream)."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": required, "properties": properties}}}}}
