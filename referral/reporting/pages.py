"""Server-rendered HTML: the jinja2 environment, and the security headers every page is sent with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import aiohttp_jinja2
import jinja2
from aiohttp import web

# No inline script or style anywhere: charts get their data from a JSON block read by a static script.
CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


SUPPRESSED_MARK: Final = "suppressed"


def figure(value: int | float | None, suppressed: bool = False) -> str:
    """A count as shown: the number, ``suppressed``, or a dash when there is nothing to show."""
    if suppressed:
        return SUPPRESSED_MARK
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def percent(value: float | None) -> str:
    """A share as a percentage, or a dash (-)."""
    return "-" if value is None else f"{value * 100:.1f} %"


def duration(seconds: float | None) -> str:
    """Seconds as the largest units that read well (``42 s``, ``1 h 05 min``, ``3 d 4 h``), or a dash (-)."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, _ = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    if hours < 1:
        return f"{minutes} min"
    days, hours = divmod(hours, 24)
    if days < 1:
        return f"{hours} h {minutes:02d} min"
    return f"{days} d {hours} h"


def setup_templates(app: web.Application) -> None:
    """Templates from the package, autoescaped, with undefined names an error rather than blank."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("referral.reporting", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        filters={"figure": figure, "percent": percent, "duration": duration},
    )


def render_page(
    template: str,
    request: web.Request,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An HTML page with the security headers."""
    response = aiohttp_jinja2.render_template(template, request, dict(context), status=status)
    response.headers.update(SECURITY_HEADERS)
    response.headers.update(headers or {})
    return response
