"""``/v1/stats`` and ``/v1/reports/transparency``: aggregate figures as JSON, CSV or a printable page."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from referral.auth.principal import Principal, require_scope
from referral.core import errors
from referral.core.appkeys import sessionmaker_key, settings_key
from referral.core.timeutil import utcnow
from referral.core.web import json_response
from referral.reporting import service, transparency
from referral.reporting.export import stats_csv
from referral.reporting.pages import render_page
from referral.reporting.params import Format, StatsQuery, parse_format, parse_stats_query

routes = web.RouteTableDef()

CSV_CONTENT_TYPE = "text/csv"


def csv_response(text: str, *, filename: str) -> web.Response:
    """A CSV download."""
    return web.Response(
        text=text,
        content_type=CSV_CONTENT_TYPE,
        charset="utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
        },
    )


async def stats_for(
    request: web.Request, principal: Principal | None, query: StatsQuery, now: datetime
) -> service.StatsTable:
    """The statistics table of ``query`` as ``principal`` (None: the public) may see it, in one read."""
    async with request.app[sessionmaker_key]() as session:
        return await service.compute_stats(
            session,
            query=query,
            reader=service.reader_for(principal),
            now=now,
            threshold=request.app[settings_key].stats_suppression_threshold,
        )


@routes.get("/v1/stats")
async def get_stats(request: web.Request) -> web.Response:
    """Counts, shares and durations by period and group; aggregates suppressed for observers."""
    principal = require_scope(request, "stats:read")
    now = utcnow()
    output = parse_format(request.query, request.headers.get("Accept", ""))
    table = await stats_for(request, principal, parse_stats_query(request.query, now=now), now)
    if output is Format.CSV:
        return csv_response(stats_csv(table), filename="referral-stats.csv")
    return json_response(service.stats_document(table))


@routes.get("/v1/reports/transparency")
async def get_transparency_report(request: web.Request) -> web.Response:
    """The annual TCO Art. 7 (provider) or Art. 8 (authority) transparency report, as JSON or HTML."""
    principal = require_scope(request, "stats:read")
    now = utcnow()
    year = transparency.parse_year(request.query.get("year"), now)
    raw_format = request.query.get("format")
    accept = request.headers.get("Accept", "")
    if raw_format not in (None, "json", "html"):
        raise errors.ValidationFailed(
            "the report query is invalid",
            errors=[{"loc": ["query", "format"], "msg": "must be one of: html, json", "type": "value_error"}],
        )
    as_html = raw_format == "html" or (raw_format is None and accept.split(",")[0].strip() == "text/html")
    async with request.app[sessionmaker_key]() as session:
        party = await transparency.report_party(
            session, principal=principal, party_id=request.query.get("party", principal.party_id)
        )
        report = await transparency.transparency_report(
            session,
            party=party,
            year=year,
            now=now,
            threshold=request.app[settings_key].stats_suppression_threshold,
        )
    if as_html:
        return render_page("transparency.html", request, {"report": report})
    return json_response(report)
