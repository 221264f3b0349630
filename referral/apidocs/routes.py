"""``/openapi.yaml`` (the contract the tests hold the service to) and ``/docs``, a reference page that
works offline: Redoc ships in the package (``static/``, its MIT licence alongside); nothing comes from
elsewhere."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

HERE = Path(__file__).resolve().parent
# A symlink to docs/api/openapi.yaml in the source tree; setuptools copies the file itself into wheels.
OPENAPI = HERE / "openapi.yaml"
REDOC = HERE / "static" / "redoc.standalone.js"
# Redoc renders with inline styles and a web worker made from a blob; scripts come only from here.
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; worker-src blob:; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)
HTML_HEADERS = {
    "Content-Security-Policy": DOCS_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

routes = web.RouteTableDef()


@routes.get("/openapi.yaml")
async def openapi_document(_request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this service."""
    return web.Response(
        body=OPENAPI.read_bytes(),
        content_type="application/yaml",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@routes.get("/docs")
async def reference_page(_request: web.Request) -> web.Response:
    """The API reference, rendered in the browser from ``/openapi.yaml``."""
    return web.Response(
        body=(HERE / "index.html").read_bytes(), content_type="text/html", headers=HTML_HEADERS
    )


@routes.get("/docs/redoc.standalone.js")
async def reference_script(_request: web.Request) -> web.Response:
    """The vendored Redoc bundle."""
    return web.Response(
        body=REDOC.read_bytes(),
        content_type="application/javascript",
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )
