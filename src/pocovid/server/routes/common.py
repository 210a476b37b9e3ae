"""OpenAPI pieces shared by the endpoints that take an upload or a token."""

from __future__ import annotations

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


def multipart_doc(properties: dict, required: list[str]) -> dict:
    """`openapi_extra` of an endpoint that reads its multipart body itself (as a stream)."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": required, "properties": properties}}}}}
