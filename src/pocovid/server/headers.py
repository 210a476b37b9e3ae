"""Security headers on every response: Content-Security-Policy per kind of page, nosniff, no referrer."""

from __future__ import annotations

CSP_PAGE = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; "
            "script-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'self'")
# Swagger UI's page is one inline script over the bundled files (fastapi-offline): no CDN.
CSP_DOCS = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'")
# Artifacts (report.html): images and styles of this server, no script.
CSP_FILES = ("default-src 'self' data: blob:; style-src 'self' 'unsafe-inline' data:; script-src 'none'; "
             "object-src 'none'; frame-ancestors 'self'; base-uri 'none'")
_ALWAYS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"cross-origin-opener-policy", b"same-origin")]


def extra_headers(path: str, names: set[bytes]) -> list[tuple[bytes, bytes]]:
    """The security headers a response to `path` gets, less those it already has (`names`, lower case)."""
    extra = list(_ALWAYS)
    if b"content-security-policy" not in names:
        csp = CSP_DOCS if path.startswith(("/docs", "/offline-docs")) else CSP_PAGE
        extra.append((b"content-security-policy", csp.encode()))
    if path.startswith("/api/") and b"cache-control" not in names and "/files/" not in path:
        extra.append((b"cache-control", b"no-store"))
    return [h for h in extra if h[0] not in names]


class SecurityHeaders:
    """Plain ASGI middleware: security headers on every response (bodies stream through untouched)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                message["headers"] = headers + extra_headers(path, {k.lower() for k, _ in headers})
            await send(message)

        await self.app(scope, receive, send_with_headers)
