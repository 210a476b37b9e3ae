"""Requests a web page in another origin can forge are refused before any endpoint runs.

* **Host allow-list** (DNS rebinding): `create_app` puts Starlette's `TrustedHostMiddleware` in
  front; only `ServerConfig.hosts` (localhost, 127.0.0.1, [::1] and `--allowed-host`) are answered,
  anything else gets 400.
* **CSRF** (`CsrfGuard`): a request that changes state (POST, PUT, PATCH, DELETE) must carry a
  header a cross-site HTML form or a "simple" cross-origin fetch cannot send: `X-Requested-With`
  (any value; the page sends `pocovid`), `Authorization`, or a JSON body
  (`Content-Type: application/json`). A browser sends those cross-origin only after a CORS
  preflight, which this server answers only for the `--cors-origin` origins (OWASP "custom request
  headers"). A request with an `Origin` header naming another site (not this Host, not a CORS
  origin) is refused as well. Refusals are 403 with a JSON reason.

    curl -H 'X-Requested-With: curl' -F file=@scan.mp4 http://127.0.0.1:8000/api/analyses
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "x-requested-with"


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def csrf_refusal(scope, cors_origins: frozenset[str]) -> str | None:
    """Why a request must be refused as possibly forged by another site; None when it may pass."""
    if scope.get("method", "GET").upper() not in UNSAFE_METHODS:
        return None
    origin = _header(scope, b"origin")
    if origin and origin != "null" and origin not in cors_origins:
        host = (_header(scope, b"host") or "").lower()
        if urlsplit(origin).netloc.lower() != host:
            return "cross-origin request refused (the Origin is not this server)"
    elif origin == "null":
        return "cross-origin request refused (Origin: null)"
    ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
    if _header(scope, CSRF_HEADER.encode()) or _header(scope, b"authorization") or ctype == "application/json":
        return None
    return ("a request that changes data needs the header 'X-Requested-With' (any value), a bearer token "
            "or a JSON body (CSRF protection; see docs/server.md)")


class CsrfGuard:
    """Plain ASGI middleware: refuses state-changing requests a cross-site page could forge."""

    def __init__(self, app, cors_origins=()):
        self.app = app
        self.cors_origins = frozenset(cors_origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            why = csrf_refusal(scope, self.cors_origins)
            if why is not None:
                body = json.dumps({"detail": why}).encode()
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
