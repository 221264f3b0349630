"""``/dashboard``: the statistics as a server-rendered page with charts, for people rather than programs.

Sign-in: an observer (or any party with ``stats:read``) pastes an access token its API client obtained at
``/oauth/token``. The token is checked like a bearer token and kept in an HttpOnly, SameSite=Strict cookie
scoped to ``/dashboard`` (Secure over HTTPS), so the session ends when the token expires and a revoked client
is locked out at once. The forms carry a CSRF token that must match a second cookie (double submit). With
``REFERRAL_PUBLIC_DASHBOARD=1`` the page is public and shows the suppressed aggregates.

The page shows figures only, never a referral or anything from one.
"""

from __future__ import annotations

import hmac
import mimetypes
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final
from urllib.parse import urlencode

import structlog
from aiohttp import web
from aiohttp.web_request import FileField
from multidict import MultiDict, MultiDictProxy
from sqlalchemy import select

from referral.auth.principal import Principal
from referral.auth.state import auth_state_key
from referral.core import errors
from referral.core.appkeys import sessionmaker_key, settings_key
from referral.core.timeutil import utcnow
from referral.parties.models import Party
from referral.referrals.documents import DocumentType
from referral.reporting.export import stats_csv
from referral.reporting.pages import render_page
from referral.reporting.params import Dimension, parse_stats_query
from referral.reporting.periods import Interval, bucket_start, next_bucket
from referral.reporting.routes import csv_response, stats_for
from referral.reporting.service import StatsTable
from referral.reporting.tables import ACTION_TIME_BUCKETS, PublishedLine

log = structlog.get_logger("referral.reporting.dashboard")

routes = web.RouteTableDef()

SESSION_COOKIE: Final = "referral_dashboard"
CSRF_COOKIE: Final = "referral_csrf"
COOKIE_PATH: Final = "/dashboard"
STATIC_PREFIX: Final = "/dashboard/static/"
MAX_TOKEN_FIELD: Final = 8192
DEFAULT_MONTHS: Final = 12
# The query parameters the dashboard's filter form sends on to the statistics.
FILTER_PARAMETERS: Final = ("from", "to", "interval", "type", "provider")
ACTION_TIME_LABELS: Final = {
    "action_within_1h": "within 1 h",
    "action_1h_to_4h": "1-4 h",
    "action_4h_to_24h": "4-24 h",
    "action_1d_to_7d": "1-7 days",
    "action_over_7d": "over 7 days",
}
BREAKDOWNS: Final = (
    Dimension.TYPE,
    Dimension.PROVIDER,
    Dimension.AUTHORITY,
    Dimension.COUNTRY,
    Dimension.CATEGORY,
)


@dataclass(frozen=True)
class StaticFile:
    """A file shipped in ``static/``, read once."""

    body: bytes
    content_type: str


static_files_key = web.AppKey("static_files_key", dict[str, StaticFile])


def _static_files() -> dict[str, StaticFile]:
    """Every file under the package's ``static/`` directory, by its path relative to it."""
    files: dict[str, StaticFile] = {}
    pending = [(resources.files("referral.reporting") / "static", "")]
    while pending:
        directory, prefix = pending.pop()
        for entry in directory.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                pending.append((entry, name + "/"))
                continue
            content_type = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
            if entry.name.endswith(".md"):
                content_type = "text/plain"
            files[name] = StaticFile(entry.read_bytes(), content_type)
    return files


async def dashboard_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the static files, read once."""
    app[static_files_key] = _static_files()
    yield


@routes.get("/dashboard/static/{name:.+}")
async def get_static(request: web.Request) -> web.Response:
    """A stylesheet, script or license shipped with the package (no CDN: the dashboard works offline)."""
    static = request.app[static_files_key].get(request.match_info["name"])
    if static is None:
        raise errors.NotFound("no such file")
    return web.Response(
        body=static.body,
        content_type=static.content_type,
        charset="utf-8" if static.content_type.startswith("text/") else None,
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=3600"},
    )


def _secure(request: web.Request) -> bool:
    return request.secure or request.app[settings_key].public_url.startswith("https://")


def _set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str) -> None:
    response.set_cookie(
        name, value, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=_secure(request)
    )


def _csrf_token(request: web.Request) -> tuple[str, bool]:
    """The request's CSRF token and whether it is new (to be set as a cookie)."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if 20 <= len(current) <= 100 and current.isascii():
        return current, False
    return secrets.token_urlsafe(32), True


def _page(
    template: str, request: web.Request, context: Mapping[str, Any], *, status: int = 200
) -> web.Response:
    """A dashboard page with its CSRF token in the context and, if new, in a cookie."""
    csrf, is_new = _csrf_token(request)
    response = render_page(template, request, {**context, "csrf_token": csrf}, status=status)
    if is_new:
        _set_cookie(response, request, CSRF_COOKIE, csrf)
    return response


def _check_csrf(request: web.Request, form: Mapping[str, Any]) -> None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    submitted = form.get("csrf_token", "")
    if not cookie or not isinstance(submitted, str) or not hmac.compare_digest(cookie, submitted):
        raise errors.Forbidden("the form is stale or was not sent from this site; reload it and try again")


async def _principal(request: web.Request, token: str) -> Principal | None:
    verifier = request.app[auth_state_key].verifier
    try:
        return await verifier.principal(token, request.app[sessionmaker_key])
    except errors.Unauthorized:
        return None


class SignInRequired(Exception):
    """The page needs a signed-in party (there is no valid session and the dashboard is not public)."""


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _to_login() -> web.Response:
    """A redirect to the sign-in form that also forgets any session."""
    response = _redirect("/dashboard/login")
    response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response


async def _viewer(request: web.Request) -> Principal | None:
    """The signed-in principal, or None for the public page; ``SignInRequired`` otherwise."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        principal = await _principal(request, token)
        if principal is not None and "stats:read" in principal.scopes:
            return principal
        raise SignInRequired
    if request.app[settings_key].public_dashboard:
        return None
    raise SignInRequired


SIGN_IN_ERRORS: Final = {
    "invalid_token": "That access token is not valid (or has expired).",
    "insufficient_scope": "That access token does not grant the scope stats:read.",
}


@routes.get("/dashboard/login")
async def get_login(request: web.Request) -> web.Response:
    """The sign-in form, with the reason the last attempt failed (if any)."""
    error = SIGN_IN_ERRORS.get(request.query.get("error", ""))
    return _page(
        "login.html", request, {"error": error, "public": request.app[settings_key].public_dashboard}
    )


async def _form(request: web.Request) -> MultiDictProxy[str | bytes | bytearray | FileField]:
    """The posted form; 415 for anything but a URL-encoded form (the page's own), 400 if it does not parse."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise errors.UnsupportedMediaType("post the form as application/x-www-form-urlencoded")
    try:
        return await request.post()
    except ValueError as exc:
        raise errors.BadRequest("the form does not parse") from exc


@routes.post("/dashboard/login")
async def post_login(request: web.Request) -> web.StreamResponse:
    """Sign in with an access token of an API client that has ``stats:read`` (then back to a GET: PRG)."""
    form = await _form(request)
    _check_csrf(request, form)
    token = form.get("access_token", "")
    token = token.strip() if isinstance(token, str) else ""
    principal = await _principal(request, token) if 0 < len(token) <= MAX_TOKEN_FIELD else None
    if principal is None:
        return _redirect("/dashboard/login?error=invalid_token")
    if "stats:read" not in principal.scopes:
        return _redirect("/dashboard/login?error=insufficient_scope")
    log.info("dashboard_signed_in", party=principal.party_id, client=principal.client_id)
    response = _redirect("/dashboard")
    _set_cookie(response, request, SESSION_COOKIE, token)
    return response


@routes.post("/dashboard/logout")
async def post_logout(request: web.Request) -> web.StreamResponse:
    """Sign out: forget the session cookie."""
    _check_csrf(request, await _form(request))
    return _to_login()


def _default_range(query: MultiDict[str], now: datetime) -> MultiDict[str]:
    """The last twelve months (this one included) unless the filters say otherwise."""
    if "from" in query or "to" in query:
        return query
    this_month = bucket_start(now.date(), Interval.MONTH)
    month_index = this_month.year * 12 + this_month.month - 1 - (DEFAULT_MONTHS - 1)
    start = this_month.replace(year=month_index // 12, month=month_index % 12 + 1)
    end = next_bucket(this_month, Interval.MONTH)
    defaults = MultiDict(query)
    defaults["from"] = start.isoformat()
    defaults["to"] = end.isoformat()
    return defaults


def _filters(request: web.Request, now: datetime) -> tuple[MultiDict[str], Dimension]:
    """The filter form's values (defaults filled in), and the dimension of the breakdown table."""
    raw = MultiDict((name, value) for name, value in request.query.items() if name in FILTER_PARAMETERS)
    raw = MultiDict((name, value) for name, value in raw.items() if value)
    breakdown_raw = request.query.get("breakdown", Dimension.TYPE.value)
    breakdown = next((dimension for dimension in BREAKDOWNS if dimension.value == breakdown_raw), None)
    if breakdown is None:
        raise errors.ValidationFailed(
            "the dashboard query is invalid",
            errors=[
                {
                    "loc": ["query", "breakdown"],
                    "msg": f"must be one of: {', '.join(BREAKDOWNS)}",
                    "type": "value_error",
                }
            ],
        )
    return _default_range(raw, now), breakdown


async def _table(
    request: web.Request, principal: Principal | None
) -> tuple[StatsTable, MultiDict[str], Dimension]:
    now = utcnow()
    filters, breakdown = _filters(request, now)
    parameters = MultiDict(filters)
    parameters["group_by"] = breakdown.value
    table = await stats_for(request, principal, parse_stats_query(parameters, now=now), now)
    return table, filters, breakdown


def _series(lines: list[PublishedLine], figure: str) -> list[int | float | None]:
    return [line.figures.get(figure) for line in lines]


def chart_data(table: StatsTable) -> dict[str, Any]:
    """What the charts draw, for the page's JSON block (suppressed figures are null: gaps, not zeros)."""
    total = table.total.figures
    return {
        "periods": [line.period.isoformat() for line in table.periods if line.period is not None],
        "timeline": {
            name: _series(table.periods, name) for name in ("received", "actioned", "no_action", "pending")
        },
        "action_time": {
            "labels": [ACTION_TIME_LABELS[name] for name, _ in ACTION_TIME_BUCKETS],
            "counts": [total.get(name) for name, _ in ACTION_TIME_BUCKETS],
        },
        "deadline": {
            "due": _series(table.periods, "removal_orders_due"),
            "within": _series(table.periods, "removal_orders_within_deadline"),
        },
    }


async def _providers(request: web.Request) -> list[tuple[str, str]]:
    """The providers to filter by: id and name (the party directory is not secret)."""
    async with request.app[sessionmaker_key]() as session:
        rows = await session.execute(
            select(Party.id, Party.name).where(Party.kind == "provider").order_by(Party.name, Party.id)
        )
        return [(party_id, name) for party_id, name in rows]


@routes.get("/dashboard")
async def get_dashboard(request: web.Request) -> web.Response:
    """The dashboard: overview, timeline, time to action, removal orders within deadline, breakdown."""
    try:
        principal = await _viewer(request)
    except SignInRequired:
        return _to_login()
    table, filters, breakdown = await _table(request, principal)
    csv_query = MultiDict(filters)
    csv_query["breakdown"] = breakdown.value
    context = {
        "table": table,
        "total": table.total.figures,
        "charts": chart_data(table),
        "filters": filters,
        "breakdown": breakdown.value,
        "breakdowns": [dimension.value for dimension in BREAKDOWNS],
        "types": [member.value for member in DocumentType],
        "intervals": [member.value for member in Interval],
        "providers": await _providers(request),
        "principal": principal,
        "csv_url": "/dashboard/stats.csv?" + urlencode(list(csv_query.items())),
        "from_date": _date_field(filters.get("from")),
        "to_date": _date_field(filters.get("to")),
        "generated_at": table.generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return _page("dashboard.html", request, context)


def _date_field(raw: str | None) -> str:
    """The ``YYYY-MM-DD`` a date input shows for a filter value."""
    return (raw or "")[:10]


@routes.get("/dashboard/stats.csv")
async def get_dashboard_csv(request: web.Request) -> web.Response:
    """The figures on the page (same filters and breakdown) as CSV."""
    try:
        principal = await _viewer(request)
    except SignInRequired:
        return _to_login()
    table, _, _ = await _table(request, principal)
    return csv_response(stats_csv(table), filename="referral-stats.csv")
