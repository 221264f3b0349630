"""Statistics use cases: who sees which figures, and the table of one request. Callers own the transaction."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from referral.auth.principal import PartyKind, Principal
from referral.core import errors
from referral.core.timeutil import isoformat
from referral.reporting import queries
from referral.reporting.params import Dimension, StatsQuery
from referral.reporting.periods import bucket_start, buckets, is_aligned, midnight, next_bucket
from referral.reporting.queries import Audience, LineKey
from referral.reporting.tables import FIGURES, Line, PublishedLine, Scope, add_counts, empty_counts, publish

# Suppression solves a linear system over every published count; past this many rows it is too slow to do per
# request, and that fine a table would be mostly suppressed anyway.
MAX_SUPPRESSED_ROWS = 300


class View(StrEnum):
    """Which figures a caller gets."""

    AUTHORITY = "authority"  # its own requests, in full
    PROVIDER = "provider"  # the requests addressed to it, in full
    ALL = "all"  # every party's, in full (operators)
    AGGREGATE = "aggregate"  # every party's, small cells suppressed (observers and the public dashboard)


@dataclass(frozen=True)
class Reader:
    """Who reads statistics: the view and the audience its queries cover."""

    view: View
    audience: Audience


def reader_for(principal: Principal | None) -> Reader:
    """An authority sees its own figures, a provider its own, an operator all; anyone else aggregates."""
    if principal is None:
        return Reader(View.AGGREGATE, Audience(suppressed=True))
    if principal.party_kind is PartyKind.AUTHORITY:
        return Reader(View.AUTHORITY, Audience(issuer_id=principal.party_id))
    if principal.party_kind is PartyKind.PROVIDER:
        return Reader(View.PROVIDER, Audience(addressee_id=principal.party_id))
    if principal.party_kind is PartyKind.OPERATOR:
        return Reader(View.ALL, Audience())
    return Reader(View.AGGREGATE, Audience(suppressed=True))


@dataclass(frozen=True)
class StatsTable:
    """The published statistics of one request."""

    query: StatsQuery
    view: View
    threshold: int | None
    generated_at: datetime
    rows: list[PublishedLine]
    periods: list[PublishedLine]
    groups: list[PublishedLine]
    total: PublishedLine
    parties: dict[str, str]


def whole_periods(query: StatsQuery) -> StatsQuery:
    """The query widened to whole periods, so aggregates cannot be sliced finer than the periods shown."""
    start = midnight(bucket_start(query.start.date(), query.interval))
    end = query.end
    if not is_aligned(end, query.interval):
        end = midnight(next_bucket(bucket_start(end.date(), query.interval), query.interval))
    return replace(query, start=start, end=end)


async def compute_stats(
    session: AsyncSession, *, query: StatsQuery, reader: Reader, now: datetime, threshold: int
) -> StatsTable:
    """The statistics table of ``query`` as ``reader`` may see it."""
    await queries.prepare(session)
    suppressed = reader.audience.suppressed
    if suppressed:
        query = whole_periods(query)
    audience = reader.audience
    grouped = bool(query.group_by)
    levels = [(True, False), (False, False)] + ([(True, True), (False, True)] if grouped else [])
    if suppressed and grouped:
        # How many rows there are is known from the counts, and a table too fine is refused before its
        # durations are computed.
        row_counts = await queries.counts(session, query=query, audience=audience, now=now)
        _refuse_too_fine(grouped=True, rows=len(row_counts))
        durations = await queries.durations(session, query=query, audience=audience, levels=levels)
    else:
        if suppressed:
            _refuse_too_fine(grouped=False, rows=len(buckets(query.start, query.end, query.interval)))
        row_counts, durations = await queries.counts_and_durations(
            session, query=query, audience=audience, now=now, levels=levels
        )
    lines = _lines(query, row_counts, durations)
    published = publish(lines, threshold=threshold if suppressed else None)
    by_scope: dict[Scope, list[PublishedLine]] = {scope: [] for scope in Scope}
    for line in published:
        by_scope[line.scope].append(line)
    party_ids = [
        value
        for line in by_scope[Scope.GROUP]
        for dimension, value in zip(query.group_by, line.group, strict=True)
        if dimension in (Dimension.PROVIDER, Dimension.AUTHORITY)
    ]
    return StatsTable(
        query=query,
        view=reader.view,
        threshold=threshold if suppressed else None,
        generated_at=now,
        rows=by_scope[Scope.ROW],
        periods=by_scope[Scope.PERIOD],
        groups=by_scope[Scope.GROUP],
        total=by_scope[Scope.TOTAL][0],
        parties=await queries.party_names(session, party_ids),
    )


def _refuse_too_fine(*, grouped: bool, rows: int) -> None:
    if rows > MAX_SUPPRESSED_ROWS:
        raise errors.ValidationFailed(
            "the table is too fine for aggregates with suppression",
            errors=[
                {
                    "loc": ["query", "group_by" if grouped else "interval"],
                    "msg": f"more than {MAX_SUPPRESSED_ROWS} rows: group by less, or choose a wider interval",
                    "type": "too_fine",
                }
            ],
        )


def _lines(
    query: StatsQuery,
    row_counts: dict[LineKey, dict[str, int]],
    durations: dict[LineKey, dict[str, float | None]],
) -> list[Line]:
    """Rows (when grouped), then a line per period, per group (when grouped), and the total."""
    grouped = bool(query.group_by)
    period_counts = {period: empty_counts() for period in buckets(query.start, query.end, query.interval)}
    group_counts: dict[tuple[str, ...], dict[str, int]] = {}
    total_counts = empty_counts()
    for (period, group), counts in row_counts.items():
        assert period is not None
        add_counts(period_counts.setdefault(period, empty_counts()), counts)
        add_counts(group_counts.setdefault(group, empty_counts()), counts)
        add_counts(total_counts, counts)
    lines = []
    if grouped:
        for key in sorted(row_counts, key=_order):
            lines.append(Line(Scope.ROW, key[0], key[1], row_counts[key], durations.get(key, {})))
    for period in sorted(period_counts):
        lines.append(Line(Scope.PERIOD, period, (), period_counts[period], durations.get((period, ()), {})))
    if grouped:
        for group in sorted(group_counts):
            lines.append(
                Line(Scope.GROUP, None, group, group_counts[group], durations.get((None, group), {}))
            )
    lines.append(Line(Scope.TOTAL, None, (), total_counts, durations.get((None, ()), {})))
    return lines


def _order(key: LineKey) -> tuple[date, tuple[str, ...]]:
    period, group = key
    assert period is not None
    return period, group


def line_document(line: PublishedLine, group_by: Iterable[Dimension]) -> dict[str, Any]:
    """One line as JSON: its period and group values, figures, and the names of the suppressed ones."""
    document: dict[str, Any] = {}
    if line.period is not None:
        document["period"] = line.period.isoformat()
    if line.scope in (Scope.ROW, Scope.GROUP):
        document.update(
            {dimension.value: value for dimension, value in zip(group_by, line.group, strict=True)}
        )
    document["figures"] = line.figures
    document["suppressed"] = list(line.suppressed)
    return document


def stats_document(table: StatsTable) -> dict[str, Any]:
    """The JSON body of ``GET /v1/stats``."""
    query = table.query
    return {
        "from": isoformat(query.start),
        "to": isoformat(query.end),
        "interval": query.interval.value,
        "group_by": [dimension.value for dimension in query.group_by],
        "filters": query.filter_values(),
        "view": table.view.value,
        "suppression": None if table.threshold is None else {"threshold": table.threshold},
        "generated_at": isoformat(table.generated_at),
        "figures": list(FIGURES),
        "rows": [line_document(line, query.group_by) for line in table.rows],
        "periods": [line_document(line, ()) for line in table.periods],
        "groups": [line_document(line, query.group_by) for line in table.groups],
        "total": line_document(table.total, ()),
        "parties": table.parties,
    }
